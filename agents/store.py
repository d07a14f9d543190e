"""The on-disk Chroma index: chunks with their embeddings, and a registry of complete documents.

Per (corpus, embedder) pair there is one chunk collection `<name>` and its document registry
`<name>.docs`. A chunk record holds the chunk text and `{doc_id, chunk_index, start, end,
token_start, n_tokens, source}`; a document is entered in the registry (with the mean of its chunk
embeddings) only after all its chunks are stored, so an interrupted run leaves no document that
looks complete but is not. Whole documents are rebuilt from their chunks (`agents.chunker.stitch`),
so no text is stored twice. Embeddings are always passed in: Chroma's own embedder would try to
download a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.chunker import Chunk, stitch
from agents.errors import InputError


@dataclass(frozen=True)
class RetrievedDocument:
    """A whole document found by a search; `score` is the cosine similarity of its best chunk."""

    id: str
    text: str
    score: float
    source: str
    title: str
    n_tokens: int
    best_chunk: int

    @classmethod
    def from_registry(cls, doc_id: str, text: str, score: float, chunk: int, meta: dict) -> RetrievedDocument:
        """Build from a ranked hit (see `ChromaStore.rank`) and the document's rebuilt text."""
        return cls(
            id=doc_id,
            text=text,
            score=score,
            source=str(meta.get("source", "")),
            title=str(meta.get("title", "")),
            n_tokens=int(meta.get("n_tokens", 0)),
            best_chunk=chunk,
        )


def collection_name(corpus: str, embedder: str) -> str:
    """A valid Chroma collection name (3–200 chars of [a-zA-Z0-9._-]) for a (corpus, embedder) pair."""
    name = re.sub(r"[^a-zA-Z0-9._-]+", "-", f"{corpus}__{embedder}").strip("._-")[:200].strip("._-")
    return name if len(name) >= 3 else f"idx-{name}"


class ChromaStore:
    """Chroma `PersistentClient` at `path`; nothing is written before `open()`."""

    def __init__(self, path: str, collection: str | None = None, max_batch: int | None = None) -> None:
        self.path = Path(path).expanduser()
        self.collection = collection
        self.requested_max_batch = max_batch
        self._client = None
        self._chunks = None
        self._docs = None

    @property
    def client(self):
        """The Chroma client (telemetry off), created on first use."""
        if self._client is None:
            import chromadb
            from chromadb.config import Settings

            self._client = chromadb.PersistentClient(
                path=str(self.path), settings=Settings(anonymized_telemetry=False)
            )
        return self._client

    @property
    def max_batch(self) -> int:
        """Records per write: the client's limit, or less if asked."""
        limit = self.client.get_max_batch_size()
        return min(limit, self.requested_max_batch) if self.requested_max_batch else limit

    def require(self, corpus: str, embedder: str) -> str:
        """The collection name for a corpus and embedder; refuses one that was never built."""
        name = self.collection or collection_name(corpus, embedder)
        if not self.path.exists() or name not in {c.name for c in self.client.list_collections()}:
            raise InputError(
                f"no index {name!r} in store.path={self.path}: build it first with "
                "`python index.py` and the same corpus, embedder and store settings"
            )
        return name

    def open(
        self,
        corpus: str,
        embedder: str,
        dimension: int,
        chunking: dict[str, Any] | None,
        create: bool = True,
    ) -> str:
        """Open (or create) the collections for a corpus and embedder; returns the collection name.

        Refuses an existing collection made with another embedding dimension or (unless `chunking`
        is None, as for readers) another chunking.
        """
        name = self.require(corpus, embedder) if not create else self.collection or collection_name(corpus, embedder)
        meta = {"hnsw:space": "cosine", "corpus": corpus, "embedder": embedder, "dimension": dimension}
        meta.update(chunking or {})
        chunks = self.client.get_or_create_collection(name, metadata=meta, embedding_function=None)
        existing = chunks.metadata or {}
        if existing.get("dimension") != dimension:
            raise InputError(
                f"collection {name!r} in {self.path} holds {existing.get('dimension')}-dimensional "
                f"embeddings (embedder {existing.get('embedder')!r}) but embedder {embedder!r} makes "
                f"{dimension}: use a new store.path or set store.collection to a new name"
            )
        changed = {k: (existing.get(k), v) for k, v in (chunking or {}).items() if existing.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise InputError(
                f"collection {name!r} in {self.path} was chunked differently ({detail}): use a new "
                "store.path or set store.collection to a new name"
            )
        self._chunks = chunks
        self._docs = self.client.get_or_create_collection(
            f"{name}.docs", metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        return name

    @property
    def chunks(self):
        """The chunk collection (after `open`)."""
        if self._chunks is None:
            raise RuntimeError("ChromaStore.open() must be called first")
        return self._chunks

    @property
    def docs(self):
        """The document registry collection (after `open`)."""
        if self._docs is None:
            raise RuntimeError("ChromaStore.open() must be called first")
        return self._docs

    def _batches(self, n: int) -> range:
        return range(0, n, self.max_batch)

    def existing_chunks(self, ids: Sequence[str]) -> set[str]:
        """Which of these chunk ids are stored."""
        found: set[str] = set()
        for i in self._batches(len(ids)):
            found.update(self.chunks.get(ids=list(ids[i : i + self.max_batch]), include=[])["ids"])
        return found

    def chunk_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of these chunk ids."""
        out: dict[str, np.ndarray] = {}
        for i in self._batches(len(ids)):
            got = self.chunks.get(ids=list(ids[i : i + self.max_batch]), include=["embeddings"])
            out.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        return out

    def upsert_chunks(
        self, ids: Sequence[str], embeddings: np.ndarray, texts: Sequence[str], metadatas: Sequence[dict]
    ) -> None:
        """Write chunk records in batches no larger than the store's limit."""
        for i in self._batches(len(ids)):
            j = i + self.max_batch
            self.chunks.upsert(
                ids=list(ids[i:j]),
                embeddings=embeddings[i:j],
                documents=list(texts[i:j]),
                metadatas=list(metadatas[i:j]),
            )

    def registered(self, doc_ids: Sequence[str]) -> dict[str, dict]:
        """Registry metadata of those documents that are completely stored."""
        out: dict[str, dict] = {}
        for i in self._batches(len(doc_ids)):
            got = self.docs.get(ids=list(doc_ids[i : i + self.max_batch]), include=["metadatas"])
            out.update(zip(got["ids"], got["metadatas"]))
        return out

    def register(self, doc_ids: Sequence[str], embeddings: np.ndarray, metadatas: Sequence[dict]) -> None:
        """Mark documents complete; call only after all their chunks are upserted."""
        for i in self._batches(len(doc_ids)):
            j = i + self.max_batch
            self.docs.upsert(ids=list(doc_ids[i:j]), embeddings=embeddings[i:j], metadatas=list(metadatas[i:j]))

    def documents(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Full texts of stored documents, rebuilt from their chunks."""
        pieces: dict[str, list[Chunk]] = {d: [] for d in doc_ids}
        for i in self._batches(len(doc_ids)):
            got = self.chunks.get(
                where={"doc_id": {"$in": list(doc_ids[i : i + self.max_batch])}},
                include=["documents", "metadatas"],
            )
            for text, m in zip(got["documents"], got["metadatas"]):
                pieces[m["doc_id"]].append(
                    Chunk(m["chunk_index"], text, m["start"], m["end"], m["token_start"], m["n_tokens"])
                )
        return {d: stitch(c) for d, c in pieces.items() if c}

    def chunk_at(self, offset: int) -> tuple[str, str]:
        """(id, text) of the chunk at a position of the collection's stable order."""
        got = self.chunks.get(limit=1, offset=offset, include=["documents"])
        return got["ids"][0], got["documents"][0]

    def rank(self, query_embedding: np.ndarray, k: int) -> list[tuple[str, float, int, dict]]:
        """The `k` complete documents whose best chunk is closest to the query, best first:
        (doc id, cosine similarity of the best chunk, its index, registry metadata)."""
        total = self.chunks.count()
        if total == 0 or k <= 0:
            return []
        n = min(total, max(50, 10 * k))
        while True:
            found = self.chunks.query(
                query_embeddings=[np.asarray(query_embedding, dtype=np.float32)],
                n_results=n,
                include=["metadatas", "distances"],
            )
            best: dict[str, tuple[float, int]] = {}
            for m, dist in zip(found["metadatas"][0], found["distances"][0]):
                best.setdefault(m["doc_id"], (1.0 - float(dist), int(m["chunk_index"])))
            complete = self.registered(list(best))
            ranked = [(d, s, c, complete[d]) for d, (s, c) in best.items() if d in complete]
            if len(ranked) >= k or n >= total:
                return ranked[:k]
            n = min(total, n * 4)

    def search(self, query_embedding: np.ndarray, k: int) -> list[RetrievedDocument]:
        """The `k` best documents (see `rank`), whole, with their scores."""
        ranked = self.rank(query_embedding, k)
        texts = self.documents([d for d, _, _, _ in ranked])
        return [RetrievedDocument.from_registry(d, texts[d], s, c, m) for d, s, c, m in ranked]
