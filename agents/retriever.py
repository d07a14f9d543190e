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

    def gather(self, query: str, budget_tokens: int, count: Callable[[str], int]) -> list[tuple[RetrievedDocument, int]]:
        """Documents for `query`, best first, until their token counts (by `count`) reach the budget.

        Returns fewer when the whole collection holds less; each with its token count.
        """
        k, counts = 16, {}
        while True:
            found = self.search(query, k)
            picked, total = [], 0
            for doc in found:
                n = counts.setdefault(doc.id, count(doc.text))
                picked.append((doc, n))
                total += n
                if total >= budget_tokens:
                    return picked
            if len(found) < k:
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
