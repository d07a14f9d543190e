"""Run-time settings of the synthesis graphs: LangGraph's context schema, shown in Studio.

`synthesize.py` fills it from the Hydra config (`conf/llm`, `conf/embedder`, `conf/store`,
`conf/synth`); Studio starts from these defaults. Every field is a plain value, so the dataclass is
hashable and the heavy objects built from it (`graphs.resources`) are shared by equal contexts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from agents.samples import sample_id

_MINILM = json.dumps({"_target_": "agents.embedder.SentenceTransformerEmbedder", "name": "all-MiniLM-L6-v2"})
# How an embedder is reached, not what it computes: left out of sample ids (a new URL, timeout, device or batch
# size must not redo a finished run). What is kept (class, model, weights' sha256, prefixes, dimensions)
# decides the index and so the documents a sample gets.
_EMBEDDER_TRANSPORT = {"base_url", "api_key_env", "batch_size", "max_concurrency", "timeout", "max_retries", "device",
                       "path"}
# Settings that change how a run goes but never what a sample contains.
_NOT_CONTENT = {"cache_path", "store"}
_CHROMA = json.dumps({"_target_": "agents.store.ChromaStore", "path": "data/chroma"})
# Task types of long-input instructions -> weights (agents.prompts.INSTRUCTION_TEMPLATES), as conf/synth has them.
_TASK_TYPES = json.dumps({"qa": 0.3, "summary": 0.2, "comparison": 0.2, "aggregation": 0.15, "timeline": 0.15,
                          "open": 0}, sort_keys=True)
# Store keys that decide what a sample contains (the collection read); all others (embedded or server,
# path, host, port, auth, sidecar folder, batch size) are how the index is reached, left out of sample ids.
_STORE_CONTENT = ("collection",)


@dataclass(frozen=True, kw_only=True)
class SynthContext:
    """Everything a synthesis run may change without touching code."""

    # The OpenAI-compatible endpoint that writes instructions, summaries and answers.
    llm_base_url: str = os.environ.get("SELFLONG_LLM_URL", "http://127.0.0.1:8000/v1")
    llm_model: str = os.environ.get("SELFLONG_LLM_MODEL", "meta-llama/Llama-3.1-8B-Instruct")
    # Name of the environment variable holding the API key (the key never enters settings).
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_temperature: float = 0.7
    llm_max_tokens: int = 2048
    llm_timeout: float = 600.0
    # Retries (with backoff) on connection errors, timeouts, 408, 429 and 5xx.
    llm_max_retries: int = 5
    # Send response_format=json_schema; turned off automatically for endpoints that reject it.
    llm_structured_outputs: bool = True
    # Requests in flight, across all samples of the process.
    llm_max_in_flight: int = 16
    # On-disk cache of finished LLM calls (resume at request granularity).
    cache_path: str = "data/synth/llm_cache.sqlite"
    # The index built by index.py: the store (embedded folder or Chroma server; a Hydra node of conf/store as
    # JSON), corpus name and embedder (a Hydra node as JSON).
    store: str = _CHROMA
    corpus: str = "python_docs"
    embedder: str = _MINILM
    # Local folder of the target model's tokenizer (null: the bundled MiniLM one) and chat template.
    tokenizer: str | None = None
    chat_template: str | None = None
    # Seed of every random choice (seed chunks, document order).
    seed: int = 0
    shuffle_documents: bool = True
    # A document longer than this share of the target is cut, so every sample spans several.
    max_document_share: float = 0.5
    doc_header: str = "Document {index}: {title}"
    instruction_position: str = "after"
    instruction_min_words: int = 8
    instruction_max_words: int = 120
    instruction_attempts: int = 3
    # Task type -> weight (JSON text of a mapping: a hashable field); each sample draws one from its seed and index.
    task_types: str = _TASK_TYPES
    dedup_threshold: float = 0.7
    # Near-duplicate by meaning: cosine of the instructions' embeddings (the index's embedder); None or 1.0: off.
    dedup_cosine: float | None = 0.9
    qfs_chunk_tokens: int = 4096
    qfs_budget_tokens: int = 16384
    qfs_max_depth: int = 4
    # A QFS piece whose summary still fails after the client's retries is dropped (and recorded in the sample's
    # provenance); the sample is rejected only when more than this share of a level's pieces failed.
    max_dropped_share: float = 0.1
    answer_min_words: int = 10
    # Target tokens reserved for the answer when documents are fitted before it is written, and the answer's cap: the
    # documents QFS (or ACER's reader) reads are exactly those of the finished sample.
    answer_max_tokens: int = 2048
    # The answer cites its documents by the sample's own labels ("Document 3"); it is always confined to the notes.
    cite: bool = True
    # A judge call checks each answer against its notes (rejected as "ungrounded") and each back-translated
    # instruction against its document.
    verify: bool = False
    backtranslation_min_tokens: int = 2048
    backtranslation_max_tokens: int = 32768
    acer_chunk_tokens: int = 512
    acer_top_m: int = 8
    acer_ranker: str = "embedding"

    def sample_id(self, kind: str, index: int, target_tokens: int | None = None) -> str:
        """Id of the sample a graph makes from this index: a hash of what decides its content (the model,
        generation and fitting settings, prompts' settings, corpus and embedder identity), never of URLs,
        timeouts, paths or concurrency."""
        decided_by = {k: v for k, v in asdict(self).items() if not k.startswith("llm_") and k not in _NOT_CONTENT}
        embedder = json.loads(self.embedder)
        decided_by["embedder"] = {k: v for k, v in embedder.items() if k not in _EMBEDDER_TRANSPORT}
        store = json.loads(self.store)
        # only when set, so that ids made before the store became a node (the default collection) stay the same
        decided_by.update({f"store_{k}": store[k] for k in _STORE_CONTENT if store.get(k) is not None})
        return sample_id(
            kind=kind, index=index, target_tokens=target_tokens, llm_model=self.llm_model,
            llm_temperature=self.llm_temperature, llm_max_tokens=self.llm_max_tokens, settings=decided_by,
        )

    @classmethod
    def from_config(cls, llm: dict[str, Any], embedder: dict[str, Any], store: dict[str, Any],
                    corpus: str, synth: dict[str, Any]) -> SynthContext:
        """Build from plain dicts of the Hydra groups (see conf/synthesize.yaml)."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {f"llm_{k}": v for k, v in llm.items()}
        values.update(embedder=json.dumps(embedder, sort_keys=True), store=json.dumps(store, sort_keys=True),
                      corpus=corpus)
        values.update({k: v for k, v in synth.items() if k in names})
        if "task_types" in values:  # a mapping in conf/synth, JSON text here; checked now, not once per sample
            from agents.instructions import task_weights

            task_weights(values["task_types"])
            if not isinstance(values["task_types"], str):
                values["task_types"] = json.dumps(dict(values["task_types"]), sort_keys=True)
        unknown = sorted(set(values) - names)
        if unknown:
            raise KeyError(f"settings without a SynthContext field: {unknown}")
        return cls(**values)
