"""Corpus → chunks → embeddings → Chroma, idempotent and resumable.

Documents already in the registry are skipped without being chunked; chunks already stored are
not embedded again. Chunks are written batch by batch and a document is registered only once all
its chunks are written, so killing the run at any moment loses at most one unfinished batch, and
the next run picks up from there. The store's sidecar (chunk positions, documents by length) is
written right after Chroma in the same steps, and every chunk and document a rerun skips is entered
again (a no-op when listed), so it is complete after any kill and rerun.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from agents.chunker import Chunk, TokenChunker
from agents.corpus import Document, content_id
from agents.embedder import Embedder
from agents.errors import InputError
from agents.store import ChromaStore

log = logging.getLogger(__name__)

DOCS_PER_LOOKUP = 64  # documents checked against the registry in one query


@dataclass
class IndexReport:
    """What an indexing run did. `new` and `skipped` count chunks."""

    collection: str = ""
    documents: int = 0
    chunks: int = 0
    new: int = 0
    skipped: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    store_seconds: float = 0.0
    skipped_inputs: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """The one line `index.py` prints."""
        line = (
            f"indexed {self.collection}: documents={self.documents} chunks={self.chunks} "
            f"new={self.new} skipped={self.skipped} seconds={self.seconds:.1f}"
        )
        if self.new == 0:
            line += " (already up to date: nothing added)"
        return line


def chunk_id(doc_id: str, chunk: Chunk) -> str:
    """Content hash naming a chunk: its document, position and text."""
    return content_id(f"{doc_id}:{chunk.index}:{chunk.start}:{chunk.text}")


@dataclass
class _OpenDoc:
    doc: Document
    pending: int = 0  # chunks read but not yet written
    n_chunks: int = 0
    n_tokens: int = 0
    finished: bool = False  # all chunks read
    vector_sum: np.ndarray | None = None


class _Indexer:
    def __init__(
        self, chunker: TokenChunker, embedder: Embedder, store: ChromaStore, batch_chunks: int, bar: tqdm
    ) -> None:
        self.chunker, self.embedder, self.store = chunker, embedder, store
        self.batch_chunks = batch_chunks
        self.bar = bar
        self.report = IndexReport()
        self.buffer: list[tuple[_OpenDoc, Chunk, str]] = []
        self.open_docs: dict[str, _OpenDoc] = {}

    def add(self, docs: Iterable[Document]) -> None:
        seen: set[str] = set()
        for group in _batched(docs, DOCS_PER_LOOKUP):
            unique = []
            for doc in group:
                if doc.id in seen:
                    self.report.duplicates += 1
                else:
                    seen.add(doc.id)
                    unique.append(doc)
            done = self.store.registered([d.id for d in unique])
            self.store.relist(docs=[(d.id, done[d.id]) for d in unique if d.id in done])
            for doc in unique:
                self.report.documents += 1
                if doc.id in done:
                    n = int(done[doc.id].get("n_chunks", 0))
                    self.report.chunks += n
                    self.report.skipped += n
                    self.bar.update(n)
                    continue
                self._chunk(doc)
        self._flush()

    def _chunk(self, doc: Document) -> None:
        state = self.open_docs[doc.id] = _OpenDoc(doc)
        for chunk in self.chunker.chunks(doc.blocks()):
            state.pending += 1
            state.n_chunks += 1
            state.n_tokens = chunk.token_start + chunk.n_tokens
            self.buffer.append((state, chunk, chunk_id(doc.id, chunk)))
            if len(self.buffer) >= self.batch_chunks:
                self._flush()
        state.finished = True
        if state.n_chunks == 0:  # nothing but whitespace or characters the tokenizer drops
            del self.open_docs[doc.id]
            self.report.documents -= 1
            self.report.skipped_inputs.append((doc.source, "empty document (no tokens)"))
        elif state.pending == 0:
            self._register([state])

    def _flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        ids = [cid for _, _, cid in batch]
        t0 = time.perf_counter()
        stored = self.store.existing_chunks(ids)
        known = self.store.chunk_embeddings(sorted(stored)) if stored else {}
        self.report.store_seconds += time.perf_counter() - t0
        todo = [(s, c, cid) for s, c, cid in batch if cid not in stored]
        self.store.relist(chunks=[(cid, _chunk_meta(s.doc, c)) for s, c, cid in batch if cid in stored])
        vectors = dict(known)
        if todo:
            t0 = time.perf_counter()
            embedded = self.embedder.embed_documents([c.text for _, c, _ in todo])
            self.report.embed_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            self.store.upsert_chunks(
                [cid for _, _, cid in todo],
                embedded,
                [c.text for _, c, _ in todo],
                [_chunk_meta(s.doc, c) for s, c, _ in todo],
            )
            self.report.store_seconds += time.perf_counter() - t0
            vectors.update(zip((cid for _, _, cid in todo), embedded))
        self.report.chunks += len(batch)
        self.report.new += len(todo)
        self.report.skipped += len(batch) - len(todo)
        self.bar.update(len(batch))
        ready = []
        for state, _, cid in batch:
            v = vectors[cid]
            state.vector_sum = v.copy() if state.vector_sum is None else state.vector_sum + v
            state.pending -= 1
            if state.finished and state.pending == 0:
                ready.append(state)
        self._register(ready)

    def _register(self, states: list[_OpenDoc]) -> None:
        if not states:
            return
        t0 = time.perf_counter()
        means = np.stack([s.vector_sum / max(np.linalg.norm(s.vector_sum), 1e-12) for s in states])
        self.store.register(
            [s.doc.id for s in states],
            means.astype(np.float32),
            [
                {
                    "source": s.doc.source,
                    "title": str(s.doc.meta.get("title", "")),  # "" when the document has none (never its source)
                    "n_chunks": s.n_chunks,
                    "n_tokens": s.n_tokens,
                    **({"url": str(s.doc.meta["url"])} if s.doc.meta.get("url") else {}),  # provenance only
                }
                for s in states
            ],
        )
        self.report.store_seconds += time.perf_counter() - t0
        for s in states:
            del self.open_docs[s.doc.id]


def _chunk_meta(doc: Document, chunk: Chunk) -> dict:
    return {
        "doc_id": doc.id,
        "chunk_index": chunk.index,
        "start": chunk.start,
        "end": chunk.end,
        "token_start": chunk.token_start,
        "n_tokens": chunk.n_tokens,
        "source": doc.source,
    }


def _batched(items: Iterable[Document], n: int) -> Iterator[list[Document]]:
    it = iter(items)
    while group := list(itertools.islice(it, n)):
        yield group


def index_corpus(
    corpus: Iterable[Document],
    chunker: TokenChunker,
    embedder: Embedder,
    store: ChromaStore,
    batch_chunks: int = 256,
    progress: bool = True,
) -> IndexReport:
    """Index every document of `corpus` (a `FileCorpus`, `PythonDocsCorpus`, …) into `store`.

    Nothing is written before the corpus has yielded a document and the embedder has answered,
    so a bad path or an unreachable endpoint leaves no trace.
    """
    start = time.perf_counter()
    docs = iter(corpus)
    first = next(docs, None)
    where = corpus.describe() if hasattr(corpus, "describe") else "the corpus"
    skipped = getattr(corpus, "skipped", [])
    if first is None:
        detail = f" ({len(skipped)} inputs skipped: {_list_skipped(skipped)})" if skipped else ""
        raise InputError(f"no documents found in {where}{detail}")
    dimension = embedder.dimension
    name = store.open(getattr(corpus, "name", "corpus"), embedder.name, dimension, chunker.settings())
    with tqdm(desc=f"indexing {name}", unit="chunk", disable=not progress, leave=False) as bar:
        indexer = _Indexer(chunker, embedder, store, batch_chunks, bar)
        indexer.report.collection = name
        indexer.add(itertools.chain([first], docs))
    report = indexer.report
    report.skipped_inputs = list(getattr(corpus, "skipped", [])) + report.skipped_inputs
    if report.skipped_inputs:
        log.warning(
            "skipped %d inputs of %s: %s", len(report.skipped_inputs), where, _list_skipped(report.skipped_inputs)
        )
    report.seconds = time.perf_counter() - start
    return report


def _list_skipped(skipped: list[tuple[str, str]], limit: int = 20) -> str:
    shown = "; ".join(f"{source} ({reason})" for source, reason in skipped[:limit])
    return shown + (f"; … and {len(skipped) - limit} more" if len(skipped) > limit else "")
