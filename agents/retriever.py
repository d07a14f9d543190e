"""Search an index built by `agents.indexer`: embed the query, return whole documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.embedder import Embedder
from agents.store import ChromaStore, RetrievedDocument


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
        """Documents for `query`, best first, until their token counts (by `count`, each at most
        `cap` when given) reach the budget.

        Texts are rebuilt `fetch` documents at a time, only as far as needed. Returns fewer when the
        whole collection holds less; each with its token count.
        """
        vector = self.embedder.embed_queries([query])[0]
        k, picked, total = 16, [], 0
        while True:
            ranked = self.store.rank(vector, k)
            for i in range(len(picked), len(ranked), fetch):
                part = ranked[i : i + fetch]
                texts = self.store.documents([d for d, _, _, _ in part])
                for doc_id, score, chunk, meta in part:
                    doc = RetrievedDocument.from_registry(doc_id, texts[doc_id], score, chunk, meta)
                    n = count(doc.text)
                    picked.append((doc, n))
                    total += n if cap is None else min(n, cap)
                    if total >= budget_tokens:
                        return picked
            if len(ranked) < k:
                return picked
            k *= 2


def format_results(query: str, results: list[RetrievedDocument], preview_chars: int = 160) -> str:
    """Human-readable ranking: score, source, title, size and the start of each document."""
    lines = [f"query: {query}"]
    if not results:
        lines.append("  (no documents)")
    for rank, doc in enumerate(results, start=1):
        preview = " ".join(doc.text.split())[:preview_chars]
        lines.append(f"  {rank}. {doc.score:.3f}  {doc.source}  ({doc.n_tokens} tokens)")
        lines.append(f"     {preview}")
    return "\n".join(lines)
