import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from agents.chunker import TokenChunker
from agents.corpus import FileCorpus, PythonDocsCorpus
from agents.embedder import OpenAIEmbedder
from agents.errors import InputError
from agents.indexer import index_corpus
from agents.retriever import Retriever
from agents.store import ChromaStore
from tests.conftest import ROOT
from tests.servers import free_port

TOPICS = {
    "rivers": "Rivers carry fresh water from mountains to the sea. Salmon swim upstream in rivers to spawn.",
    "volcano": "A volcano erupts when magma, ash and gas escape through the crust. Lava flows cool into basalt.",
    "bread": "Bread is baked from flour, water, yeast and salt. The dough rises as yeast ferments sugars.",
    "chess": "In chess the knight moves in an L shape and the bishop moves diagonally across the board.",
}


def _write_corpus(folder, repeat=1):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TOPICS.items():
        (folder / f"{name}.txt").write_text("\n\n".join([text] * repeat))
    return folder


@pytest.fixture
def hash_embedder(server):
    return OpenAIEmbedder(model="hash-embed", base_url=server.url, batch_size=4, max_retries=0)


def _index(folder, store_path, embedder, tokenizer, **kw):
    chunker = TokenChunker(tokenizer, chunk_tokens=32, overlap_tokens=4)
    store = ChromaStore(str(store_path))
    report = index_corpus(FileCorpus(str(folder)), chunker, embedder, store, progress=False, **kw)
    return report, store


def _snapshot(store):
    got = store.chunks.get(include=["documents", "metadatas"])
    return sorted(zip(got["ids"], got["documents"])), sorted(store.docs.get(include=[])["ids"])


def _sidecar(store):
    """The sidecar's chunks (in position order) and documents (by bucket and rank), after checking that it
    lists exactly what Chroma holds, in Chroma's order."""
    chunks, docs = store.sidecar.chunks(), store.sidecar.docs()
    assert [c for c, _, _ in chunks] == store.chunks.get(include=[])["ids"]
    registry = store.docs.get(include=["metadatas"])
    tokens = (m["n_tokens"] for m in registry["metadatas"])
    assert sorted((d, n) for d, n, _, _ in docs) == sorted(zip(registry["ids"], tokens))
    return chunks, docs


def test_known_document_comes_first_and_whole(tmp_path, minilm, minilm_tokenizer):
    corpus = PythonDocsCorpus(docstrings=False, limit=12)
    chunker = TokenChunker(minilm_tokenizer, chunk_tokens=200, overlap_tokens=20)
    store = ChromaStore(str(tmp_path / "db"))
    report = index_corpus(corpus, chunker, minilm, store, progress=False)
    assert report.documents == 12 and report.new == report.chunks > 12
    texts = {d.meta["title"]: d.text for d in corpus}
    retriever = Retriever(minilm, store, corpus.name, chunker.settings())
    results = retriever.search("suspend the execution of a coroutine on an awaitable object", k=3)
    assert results[0].source == "pydoc:await" and results[0].text == texts["await"].strip()
    assert results[0].score > results[1].score > results[2].score
    big = max(texts, key=lambda t: len(texts[t]))
    assert store.documents([next(d.id for d in corpus if d.meta["title"] == big)]).popitem()[1] == texts[big]


def test_reindexing_adds_nothing(tmp_path, hash_embedder, minilm_tokenizer):
    folder = _write_corpus(tmp_path / "docs", repeat=5)
    first, store = _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer)
    assert first.documents == 4 and first.new == first.chunks > 4 and first.skipped == 0
    before = _snapshot(store)
    second, store = _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer)
    assert (second.documents, second.chunks, second.new, second.skipped) == (4, first.chunks, 0, first.chunks)
    assert "already up to date" in second.summary()
    assert _snapshot(store) == before


def test_interrupted_run_resumes_and_loses_nothing(tmp_path, server, hash_embedder, minilm_tokenizer):
    folder = _write_corpus(tmp_path / "docs", repeat=8)
    reference, ref_store = _index(folder, tmp_path / "ref", hash_embedder, minilm_tokenizer, batch_chunks=4)
    server.control.requests = 0
    server.control.fail_after = 3  # the endpoint breaks down after three batches
    with pytest.raises(InputError, match="HTTP 500"):
        _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer, batch_chunks=4)
    partial = ChromaStore(str(tmp_path / "db"))
    partial.open("docs", hash_embedder.name, hash_embedder.dimension, _chunking(minilm_tokenizer))
    stored = partial.chunks.count()
    assert 0 < stored < reference.chunks
    for doc_id, meta in partial.registered(partial.docs.get(include=[])["ids"]).items():
        assert len(partial.chunks.get(where={"doc_id": doc_id}, include=[])["ids"]) == meta["n_chunks"]
    server.control.fail_after = None
    resumed, store = _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer, batch_chunks=4)
    assert resumed.skipped == stored and resumed.new == reference.chunks - stored
    assert _snapshot(store) == _snapshot(ref_store)
    assert _sidecar(store) == _sidecar(ref_store)


@pytest.mark.parametrize("killed_after", ["chunk_upsert", "register"])
def test_a_kill_between_chroma_and_the_sidecar_is_filled_in_by_the_rerun(
    killed_after, tmp_path, hash_embedder, minilm_tokenizer
):
    folder = _write_corpus(tmp_path / "docs", repeat=8)
    _, store = _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer, batch_chunks=4)
    complete = _sidecar(store)
    last_doc = complete[0][-1][1]  # the document registered last: the one of the last chunk
    assert sum(d == last_doc for _, d, _ in complete[0]) >= 3
    # what a kill right after a Chroma write leaves: Chroma holds what the sidecar lacks
    if killed_after == "chunk_upsert":  # its last chunks written, the document not yet registered
        store.docs.delete(ids=[last_doc])
    store.sidecar.close()
    with sqlite3.connect(store.sidecar.path) as db:
        if killed_after == "chunk_upsert":
            db.execute("DELETE FROM chunks WHERE position > (SELECT max(position) - 2 FROM chunks)")
        bucket, rank = db.execute("SELECT bucket, rank FROM docs WHERE id = ?", (last_doc,)).fetchone()
        db.execute("DELETE FROM docs WHERE id = ?", (last_doc,))
        db.execute("UPDATE buckets SET n = n - 1 WHERE bucket = ?", (bucket,))
        assert rank == db.execute("SELECT n FROM buckets WHERE bucket = ?", (bucket,)).fetchone()[0]
    again, store = _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer, batch_chunks=4)
    assert again.new == 0
    assert _sidecar(store) == complete


def _chunking(tokenizer):
    return TokenChunker(tokenizer, chunk_tokens=32, overlap_tokens=4).settings()


def test_sigkilled_index_py_resumes_to_the_same_index(tmp_path, server, minilm_tokenizer):
    folder = _write_corpus(tmp_path / "docs", repeat=30)
    args = [
        sys.executable, "index.py", "corpus=files", f"corpus.path={folder}", "embedder=openai",
        f"embedder.base_url={server.url}", "embedder.model=hash-embed", f"embedder.tokenizer={minilm_tokenizer}",
        "embedder.batch_size=2", "embedder.max_concurrency=1", "chunker.chunk_tokens=32",
        "chunker.overlap_tokens=4", "batch_chunks=2", "progress=false",
    ]
    ref = subprocess.run(args + [f"store.path={tmp_path / 'ref'}"], cwd=ROOT, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    server.control.latency = 0.05
    for kill_at in (4, 9):
        server.control.requests = 0
        proc = subprocess.Popen(args + [f"store.path={tmp_path / 'db'}"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while server.control.requests < kill_at and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    server.control.latency = 0.0
    done = subprocess.run(args + [f"store.path={tmp_path / 'db'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped=0" not in done.stdout and "new=0 " not in done.stdout
    chunking = _chunking(minilm_tokenizer)
    stores, sidecars = [], []
    for name in ("ref", "db"):
        s = ChromaStore(str(tmp_path / name))
        s.open("docs", "hash-embed", 64, chunking)
        stores.append(_snapshot(s))
        sidecars.append(_sidecar(s))
    assert stores[0] == stores[1]
    assert sidecars[0] == sidecars[1]


def test_empty_corpus_writes_nothing(tmp_path, hash_embedder, minilm_tokenizer):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "blank.txt").write_text("\n \n")
    (folder / "blob.txt").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=r"no documents found in corpus path .*docs \(2 inputs skipped: "
                                         r".*blank.txt \(empty document\).*blob.txt \(binary"):
        _index(folder, tmp_path / "db", hash_embedder, minilm_tokenizer)
    assert not (tmp_path / "db").exists()


def test_unreachable_endpoint_writes_nothing(tmp_path, minilm_tokenizer):
    folder = _write_corpus(tmp_path / "docs")
    url = f"http://127.0.0.1:{free_port()}/v1"
    embedder = OpenAIEmbedder(model="m", base_url=url, max_retries=0, timeout=5)
    with pytest.raises(InputError, match=f"{url} is unreachable"):
        _index(folder, tmp_path / "db", embedder, minilm_tokenizer)
    assert not (tmp_path / "db").exists()


def test_big_streamed_document_is_indexed_whole(tmp_path, hash_embedder, minilm_tokenizer):
    folder = tmp_path / "docs"
    folder.mkdir()
    text = "".join(f"Paragraph {i} talks about topic {i % 17} at length.\n" for i in range(3000))
    (folder / "big.txt").write_text(text)
    (folder / "empty.md").write_text("   ")
    chunker = TokenChunker(minilm_tokenizer, chunk_tokens=64, overlap_tokens=8, segment_chars=2048)
    store = ChromaStore(str(tmp_path / "db"))
    corpus = FileCorpus(str(folder), stream_above_bytes=10_000)
    report = index_corpus(corpus, chunker, hash_embedder, store, progress=False)
    assert report.documents == 1 and report.skipped_inputs == [(str(folder / "empty.md"), "empty document")]
    (doc_id,) = store.docs.get(include=[])["ids"]
    assert store.documents([doc_id]) == {doc_id: text}
    meta = store.registered([doc_id])[doc_id]
    assert meta["n_tokens"] == chunker.count_tokens(text) and meta["n_chunks"] == report.chunks
