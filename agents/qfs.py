"""Step 3 of SelfLong synthesis: recursive query-focused summarization (QFS).

Level 0 packs the retrieved documents into chunks of at most `chunk_tokens`; every chunk is
summarized for the instruction (a "nothing relevant" reply is dropped); while the summaries exceed
the budget they are packed into groups of at most `chunk_tokens` and summarized again.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.llm import LLMClient
from agents.prompts import NOTHING_RELEVANT, QFS_PROMPT, SYSTEM_PROMPT
from agents.tokens import ChatTokenCounter


def pack_parts(parts: Sequence[tuple[str, int]], chunk_tokens: int, sep: str = "\n\n") -> list[str]:
    """Join consecutive (text, tokens) parts into pieces of at most `chunk_tokens` tokens (a part longer than that
    alone is a piece of its own)."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for text, n in parts:
        if current and size + n > chunk_tokens:
            pieces.append(sep.join(current))
            current, size = [], 0
        current.append(text)
        size += n
    if current:
        pieces.append(sep.join(current))
    return pieces


def split_counted(text: str, n_tokens: int, starts: Sequence[int], every: int) -> list[tuple[str, int]]:
    """`text` cut at `starts` (the character offsets of every `every`-th token, from `ChatTokenCounter.measure`)
    into (piece, tokens) parts."""
    cuts = [0, *starts, len(text)]
    return [(text[a:b], min(every, n_tokens - k * every)) for k, (a, b) in enumerate(zip(cuts, cuts[1:])) if b > a]


def pack(counter: ChatTokenCounter, texts: Sequence[str], chunk_tokens: int, sep: str = "\n\n",
         counts: Sequence[int] | None = None) -> list[str]:
    """Join consecutive texts into pieces of at most `chunk_tokens`, splitting any text longer than that; each
    text is encoded at most once (not at all when its count is given and it fits)."""
    parts: list[tuple[str, int]] = []
    for i, text in enumerate(texts):
        if counts is not None and counts[i] <= chunk_tokens:
            parts.append((text, counts[i]))
            continue
        n, _, starts = counter.measure(text, every=chunk_tokens)
        parts.extend(split_counted(text, n, starts, chunk_tokens))
    return pack_parts(parts, chunk_tokens, sep)


async def summarize(llm: LLMClient, instruction: str, text: str) -> str | None:
    """What `text` holds that is relevant to `instruction`, or None when nothing is."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": QFS_PROMPT.format(instruction=instruction, text=text, nothing=NOTHING_RELEVANT)},
    ]
    summary = await llm.text(messages)
    if NOTHING_RELEVANT in summary[: len(NOTHING_RELEVANT) + 20] or not summary.strip():
        return None
    return summary
