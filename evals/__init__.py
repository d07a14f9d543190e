"""Evaluation: needle-in-a-haystack and RULER against any OpenAI-compatible endpoint or a local checkpoint.

`samples` (what one example is), `prompting` (the target's tokenizer and chat template), `haystack`
(filler text), `needles` (the one needle generator: passkey and NIAH, for evaluation and training
JSONL alike), `ruler` (RULER's 13 tasks), `pregenerated` (RULER-format JSONL), `scoring`, `client`,
`serve` (`transformers serve` for a checkpoint), `runner` (resumable runs) and `report` (tables, heatmaps).
"""
