"""Search an index built by `agents.indexer`: embed the query, return whole documents."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from agents.embedder import Embedder
from agents.store import ChromaStore, RetrievedDocument

# Sizing `Retriever.gather`'s ranking: the target tokenizer may count a document below the embedder's
# registry count, and documents may be shorter than the mean; a longer ranking only searches deeper.
SAFETY = 1.5
MARGIN = 8
MIN_RANKING = 16


class Retriever:
    """Dense retrieval over an existing (corpus, embedder) collection; refuses a missing index."""

    def __init__(
        self, embedder: Embedder, store: ChromaStore, corpus: str, chunking: dict[str, Any] | None = None
    ) -> None:
        self.embedder = embedder
        self.store = store
        store.require(corpus, embedder.name)  # before the embedder loads its model
        self.collection = store.open(corpus, embedder.name, embedder.dimension, chunking, create=False)

    def search(self, query: str, k: int = 5) -> list[RetrievedDocument]:
        """The `k` documents whose best chunk is closest to `query`, best first, with scores."""
        return self.store.search(self.embedder.embed_queries([query])[0], k)

    def gather(self, query: str, budget_tokens: int, count: Callable[[str], int], cap: int | None = None,
               fetch: int = 4) -> list[tuple[RetrievedDocument, int]]:
        """Distinct documents for `query`, best first, until their token counts (by `count`, each at
        most `cap` when given) reach the budget; each with its token count. Returns fewer when the
        whole collection holds less.

        One ranking per call, sized from the budget (`first_ranking`). Only when its documents fall
        short is a longer ranking asked for, and only its documents not yet picked follow, in its
        order (best first within each ranking, so one a longer search found may score above an
        earlier pick): approximate search does not keep a shorter ranking as the prefix of a longer one, so
        documents are told apart by id, never by position. `count` is called once per returned
        document, in order, and on none past the budget; texts are rebuilt `fetch` documents at a
        time, only as far as needed.
        """
        vector = self.embedder.embed_queries([query])[0]
        k = self.first_ranking(budget_tokens, cap)
        picked: list[tuple[RetrievedDocument, int]] = []
        seen: set[str] = set()
        total = 0
        while True:
            ranked = self.store.rank(vector, k)
            fresh = [r for r in ranked if r[0] not in seen]
            for i in range(0, len(fresh), fetch):
                part = fresh[i : i + fetch]
                texts = self.store.documents([d for d, _, _, _ in part])
                for doc_id, score, chunk, meta in part:
                    doc = RetrievedDocument.from_registry(doc_id, texts[doc_id], score, chunk, meta)
                    n = count(doc.text)
                    seen.add(doc_id)
                    picked.append((doc, n))
                    total += n if cap is None else min(n, cap)
                    if total >= budget_tokens:
                        return picked
            if len(ranked) < k:  # the whole collection was ranked
                return picked
            per_doc = total / len(picked) if picked else 0.0
            more = math.ceil(SAFETY * (budget_tokens - total) / per_doc) if per_doc > 0 else k
            k += max(more + MARGIN, k // 2)

    def first_ranking(self, budget_tokens: int, cap: int | None = None) -> int:
        """How many documents the first ranking of `gather` asks for: the budget over the registry's
        mean document size (embedder tokens, at most `cap`), times `SAFETY`, plus `MARGIN`."""
        mean = self.store.mean_document_tokens()
        if cap is not None:
            mean = min(mean, cap)
        if mean <= 0:
            return MIN_RANKING
        return max(MIN_RANKING, math.ceil(SAFETY * max(budget_tokens, 0) / mean) + MARGIN)


def format_results(query: str, results: list[RetrievedDocument], preview_chars: int = 160) -> str:
    """Human-readable ranking: score, source, title, size and the start of each document."""
    lines = [f"query: {query}"]
    if not results:
        lines.append("  (no documents)")
    for rank, doc in enumerate(results, start=1):
        preview = " ".join(doc.text.split())[:preview_chars]
        title = f"  {doc.title!r}" if doc.title else ""
        lines.append(f"  {rank}. {doc.score:.3f}  {doc.source}{title}  ({doc.n_tokens} tokens)")
        lines.append(f"     {preview}")
    return "\n".join(lines)
