"""The on-disk Chroma index: chunks with their embeddings, and a registry of complete documents.

Per (corpus, embedder) pair there is one chunk collection `<name>` and its document registry
`<name>.docs`. A chunk record holds the chunk text and `{doc_id, chunk_index, start, end,
token_start, n_tokens, source}`; a document is entered in the registry (with the mean of its chunk
embeddings) only after all its chunks are stored, so an interrupted run leaves no document that
looks complete but is not. Whole documents are rebuilt from their chunks (`agents.chunker.stitch`),
so no text is stored twice. Embeddings are always passed in: Chroma's own embedder would try to
download a model.

The store is either embedded (`path`: a `PersistentClient`, one process's own in-memory HNSW) or a
Chroma server that every process shares (`host`/`port`: an `HttpClient` to `chroma run --path …`).
Beside each collection lives its sidecar (`agents.index_sidecar`), which answers "the chunk at
position p" and "random documents of lo..hi tokens" by index lookups; `upsert_chunks` and `register`
keep it in sync and `open` builds it once for an index made before it existed.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.chunker import Chunk, stitch
from agents.errors import InputError
from agents.index_sidecar import IndexSidecar


@dataclass(frozen=True)
class RetrievedDocument:
    """A whole document found by a search; `score` is the cosine similarity of its best chunk. `title` is "" for a
    document without one (see `agents.corpus`); `url`, "" when unknown, is provenance and never part of a text."""

    id: str
    text: str
    score: float
    source: str
    title: str
    n_tokens: int
    best_chunk: int
    url: str = ""

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
            url=str(meta.get("url", "")),
        )


def collection_name(corpus: str, embedder: str) -> str:
    """A valid Chroma collection name (3–200 chars of [a-zA-Z0-9._-]) for a (corpus, embedder) pair."""
    name = re.sub(r"[^a-zA-Z0-9._-]+", "-", f"{corpus}__{embedder}").strip("._-")[:200].strip("._-")
    return name if len(name) >= 3 else f"idx-{name}"


class ChromaStore:
    """Chroma `PersistentClient` at `path`, or `HttpClient` to the server at `host`:`port`; nothing is
    written before `open()`.

    `sidecar` is the folder of the collections' sidecar files (default: `<path>.sidecar` beside an
    embedded store; required with a server, and on storage every synthesis process can read).
    `headers` are sent to a server as they are; `auth_token_env` names the environment variable whose
    value is sent as `Authorization: Bearer <token>` (the token never enters settings).
    """

    def __init__(
        self,
        path: str | None = None,
        collection: str | None = None,
        max_batch: int | None = None,
        host: str | None = None,
        port: int | None = None,
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
        auth_token_env: str | None = None,
        sidecar: str | None = None,
    ) -> None:
        # settings are checked on first use (entry points turn an InputError into exit code 2; Hydra's
        # instantiate would wrap one raised here)
        self._problem = None
        if (path is None) == (host is None):
            self._problem = (
                "the store needs exactly one of store.path (an embedded Chroma folder) or store.host "
                f"(a Chroma server), got path={path!r} host={host!r}: use store=chroma or store=chroma_server"
            )
        elif sidecar is None and path is None:
            self._problem = (
                "store.sidecar is not set: a Chroma server's index needs a sidecar folder that index.py "
                "writes and every synthesis process reads (shared storage), e.g. store.sidecar=/shared/chroma.sidecar"
            )
        self.path = Path(path).expanduser() if path is not None else None
        self.host, self.port, self.ssl = host, int(port or 8000), bool(ssl)
        self.headers = dict(headers or {})
        self.auth_token_env = auth_token_env
        self.sidecar_dir = Path(sidecar).expanduser() if sidecar is not None else Path(f"{self.path}.sidecar")
        self.collection = collection
        self.requested_max_batch = max_batch
        self._client = None
        self._chunks = None
        self._docs = None
        self._sidecar: IndexSidecar | None = None
        self._listed_chunks: int | None = None
        self._ranked_total: tuple[Any, int] | None = None  # (chunk collection, its Chroma count): `rank`
        self._mean_tokens: tuple[Any, float] | None = None  # (registry, mean n_tokens): `mean_document_tokens`

    @property
    def url(self) -> str | None:
        """The server's URL (None for an embedded store)."""
        if self.host is None:
            return None
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    @property
    def where(self) -> str:
        """Where the index lives, as error messages name it."""
        return f"store.path={self.path}" if self.path is not None else f"the Chroma server at {self.url}"

    @property
    def client(self):
        """The Chroma client (telemetry off), created on first use."""
        if self._client is None:
            import chromadb
            from chromadb.config import Settings

            if self._problem:
                raise InputError(self._problem)
            settings = Settings(anonymized_telemetry=False)
            if self.path is not None:
                self._client = chromadb.PersistentClient(path=str(self.path), settings=settings)
            else:
                headers = dict(self.headers)
                if self.auth_token_env:
                    token = os.environ.get(self.auth_token_env)
                    if not token:
                        raise InputError(
                            f"store.auth_token_env names {self.auth_token_env!r}, which is not set: export it "
                            "with the Chroma server's token, or set store.auth_token_env=null"
                        )
                    headers["Authorization"] = f"Bearer {token}"
                try:
                    self._client = chromadb.HttpClient(
                        host=self.host, port=self.port, ssl=self.ssl, headers=headers, settings=settings
                    )
                except Exception as err:  # chromadb raises ValueError / httpx errors for a missing server
                    raise InputError(
                        f"the Chroma server at {self.url} is unreachable ({type(err).__name__}: {err}): start it "
                        f"with `chroma run --path /data/chroma --host {self.host} --port {self.port}` or fix "
                        "store.host / store.port"
                    ) from err
        return self._client

    @property
    def max_batch(self) -> int:
        """Records per write: the client's limit, or less if asked."""
        limit = self.client.get_max_batch_size()
        return min(limit, self.requested_max_batch) if self.requested_max_batch else limit

    def require(self, corpus: str, embedder: str) -> str:
        """The collection name for a corpus and embedder; refuses one that was never built."""
        name = self.collection or collection_name(corpus, embedder)
        if (self.path is not None and not self.path.exists()) or name not in {
            c.name for c in self.client.list_collections()
        }:
            raise InputError(
                f"no index {name!r} in {self.where}: build it first with "
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
                f"collection {name!r} in {self.where} holds {existing.get('dimension')}-dimensional "
                f"embeddings (embedder {existing.get('embedder')!r}) but embedder {embedder!r} makes "
                f"{dimension}: use a new store.path or set store.collection to a new name"
            )
        changed = {k: (existing.get(k), v) for k, v in (chunking or {}).items() if existing.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise InputError(
                f"collection {name!r} in {self.where} was chunked differently ({detail}): use a new "
                "store.path or set store.collection to a new name"
            )
        self._chunks = chunks
        self._docs = self.client.get_or_create_collection(
            f"{name}.docs", metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        self._open_sidecar(name)
        return name

    def _open_sidecar(self, name: str) -> None:
        """Open the collection's sidecar; build it (once) if it is missing or belongs to an earlier
        collection of that name."""
        sidecar = IndexSidecar(self.sidecar_dir / f"{name}.sqlite")
        collection_id = str(self.chunks.id)
        if not sidecar.is_for(collection_id):
            if not sidecar.path.exists() and self.chunks.count() == 0 and self.docs.count() == 0:
                sidecar.start(collection_id)
            else:
                sidecar.build(collection_id, self._chunk_pages(), self._doc_pages())
        self._sidecar = sidecar
        self._listed_chunks = None

    def _pages(self, collection, include: list[str]) -> Iterator[dict]:
        """Everything a collection holds, `max_batch` records a call, in its stable order."""
        total = collection.count()
        for offset in self._batches(total):
            got = collection.get(limit=self.max_batch, offset=offset, include=include)
            if not got["ids"]:
                return
            yield got

    def _chunk_pages(self) -> Iterator[list[tuple[str, str, int]]]:
        for got in self._pages(self.chunks, ["metadatas"]):
            yield _sidecar_chunks(got["ids"], got["metadatas"])

    def _doc_pages(self) -> Iterator[list[tuple[str, int]]]:
        for got in self._pages(self.docs, ["metadatas"]):
            yield [(d, int((m or {}).get("n_tokens", 0))) for d, m in zip(got["ids"], got["metadatas"])]

    @property
    def sidecar(self) -> IndexSidecar:
        """The collection's sidecar (after `open`)."""
        if self._sidecar is None:
            raise RuntimeError("ChromaStore.open() must be called first")
        return self._sidecar

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
            self._ranked_total = None
            self.sidecar.add_chunks(_sidecar_chunks(ids[i:j], metadatas[i:j]))

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
            self._mean_tokens = None
            self.sidecar.add_docs([(d, int(m.get("n_tokens", 0))) for d, m in zip(doc_ids[i:j], metadatas[i:j])])

    def relist(self, chunks: Sequence[tuple[str, dict]] = (), docs: Sequence[tuple[str, dict]] = ()) -> None:
        """Enter into the sidecar chunks `(id, metadata)` and registered documents `(id, registry
        metadata)` that Chroma already holds; a no-op for those listed. The indexer calls it for what a
        rerun skips, so whatever a kill left between a Chroma write and its sidecar write is filled in."""
        self.sidecar.add_chunks(_sidecar_chunks([c for c, _ in chunks], [m for _, m in chunks]))
        self.sidecar.add_docs([(d, int(m.get("n_tokens", 0))) for d, m in docs])

    def documents(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Full texts of complete (registered) documents, rebuilt from their chunks.

        The chunk ids come from the sidecar (which lists every chunk of a registered document) and the
        chunks from Chroma by id, both index lookups; only documents the sidecar has no chunk of are
        looked up with a `where` (a scan that grows with the index)."""
        pieces: dict[str, list[Chunk]] = {d: [] for d in doc_ids}
        listed = self.sidecar.chunk_ids_of(list(pieces))
        by_id = [c for d in pieces for c in listed.get(d, ())]
        unlisted = [d for d in pieces if d not in listed]
        calls = [{"ids": by_id[i : i + self.max_batch]} for i in self._batches(len(by_id))]
        calls += [{"where": {"doc_id": {"$in": unlisted[i : i + self.max_batch]}}}
                  for i in self._batches(len(unlisted))]
        for call in calls:
            got = self.chunks.get(**call, include=["documents", "metadatas"])
            for text, m in zip(got["documents"], got["metadatas"]):
                pieces[m["doc_id"]].append(
                    Chunk(m["chunk_index"], text, m["start"], m["end"], m["token_start"], m["n_tokens"])
                )
        return {d: stitch(c) for d, c in pieces.items() if c}

    def chunk_count(self, refresh: bool = False) -> int:
        """Chunks in the index, as the sidecar lists them (read once, then cached; `refresh` rereads)."""
        if self._listed_chunks is None or refresh:
            self._listed_chunks = self.sidecar.chunk_count()
        return self._listed_chunks

    def chunk_at(self, position: int) -> tuple[str, str]:
        """(id, text) of the chunk at a position (0 … `chunk_count()`-1) of the collection's write
        order: a sidecar lookup and a Chroma get by id, both O(log n)."""
        cid = self.sidecar.chunk_id(position)
        got = self.chunks.get(ids=[cid], include=["documents"])
        if not got["ids"]:
            raise InputError(
                f"the index sidecar {self.sidecar.path} lists chunk {cid} which {self.where} lacks: the sidecar "
                "belongs to another index; delete it and it is rebuilt on next use"
            )
        return got["ids"][0], got["documents"][0]

    def pick_documents(self, lo_tokens: int, hi_tokens: int | None, rng: random.Random, n: int = 1) -> list[str]:
        """Up to `n` distinct complete documents whose registry token count (embedder tokens) is in
        `lo_tokens..hi_tokens` (None: unbounded), drawn uniformly by `rng`, in draw order. Each draw is a
        sidecar index lookup, whatever the index size; the caller counts the texts in its own tokenizer."""
        return self.sidecar.pick_documents(lo_tokens, hi_tokens, rng, n)

    def _rankable_chunks(self) -> int:
        """Chroma's count of the chunk collection, asked once and remembered (for the collection `open`
        gave; this store's own `upsert_chunks` forgets it). A process that only reads keeps it for its
        lifetime: chunks another process adds meanwhile may be left out of `rank`'s widest query."""
        if self._ranked_total is None or self._ranked_total[0] is not self.chunks:
            self._ranked_total = (self.chunks, self.chunks.count())
        return self._ranked_total[1]

    def mean_document_tokens(self) -> float:
        """Mean registry `n_tokens` (embedder tokens) of the complete documents, 0.0 for none: one aggregate over
        the sidecar's document table (never a pass over Chroma's registry), remembered like the count in `rank`;
        this store's own `register` forgets it."""
        if self._mean_tokens is None or self._mean_tokens[0] is not self.docs:
            self._mean_tokens = (self.docs, self.sidecar.mean_doc_tokens())
        return self._mean_tokens[1]

    def rank(self, query_embedding: np.ndarray, k: int) -> list[tuple[str, float, int, dict]]:
        """The `k` complete documents whose best chunk is closest to the query, best first:
        (doc id, cosine similarity of the best chunk, its index, registry metadata).

        Approximate (HNSW): a larger `k` searches deeper and may order the shared documents
        differently, so a longer ranking is not an extension of a shorter one. The collection's size
        is counted once (see `_rankable_chunks`), not on every call."""
        total = self._rankable_chunks()
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


def _sidecar_chunks(ids: Sequence[str], metadatas: Sequence[dict]) -> list[tuple[str, str, int]]:
    return [(c, str(m.get("doc_id", "")), int(m.get("n_tokens", 0))) for c, m in zip(ids, metadatas)]
