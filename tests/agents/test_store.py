import collections
import random

import numpy as np
import pytest

from agents.errors import InputError
from agents.store import ChromaStore, collection_name
from tests.servers import free_port

CHUNKING = {"chunk_tokens": 8, "overlap_tokens": 2, "tokenizer": "t"}


def _random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_collection_names_are_valid_for_chroma():
    assert collection_name("python_docs", "all-MiniLM-L6-v2") == "python_docs__all-MiniLM-L6-v2"
    assert collection_name("my docs", "intfloat/e5-mistral-7b-instruct") == "my-docs__intfloat-e5-mistral-7b-instruct"
    assert len(collection_name("a", "")) >= 3


def test_a_batch_larger_than_the_store_maximum_is_split(tmp_path):
    store = ChromaStore(str(tmp_path / "db"))
    store.open("c", "e", 8, CHUNKING)
    n = store.client.get_max_batch_size() + 300
    ids = [f"chunk-{i}" for i in range(n)]
    metas = [{"doc_id": f"d{i // 10}", "chunk_index": i % 10} for i in range(n)]
    store.upsert_chunks(ids, _random_unit(n, 8), [f"text {i}" for i in range(n)], metas)
    assert store.chunks.count() == n
    assert store.existing_chunks(ids[-5:] + ["nope"]) == set(ids[-5:])


def test_requested_batch_limit_is_used(tmp_path):
    store = ChromaStore(str(tmp_path / "db"), max_batch=7)
    store.open("c", "e", 4, CHUNKING)
    assert store.max_batch == 7
    ids = [f"x{i}" for i in range(30)]
    store.register(ids, _random_unit(30, 4), [{"n_chunks": 1}] * 30)
    assert len(store.registered(ids)) == 30


def test_another_dimension_is_refused(tmp_path):
    ChromaStore(str(tmp_path / "db")).open("corpus", "small", 8, CHUNKING)
    with pytest.raises(InputError, match=r"holds 8-dimensional .* makes 16: use a new store.path"):
        ChromaStore(str(tmp_path / "db")).open("corpus", "small", 16, CHUNKING)


def test_another_chunking_is_refused(tmp_path):
    ChromaStore(str(tmp_path / "db")).open("corpus", "e", 8, CHUNKING)
    other = dict(CHUNKING, chunk_tokens=16)
    with pytest.raises(InputError, match=r"chunked differently \(chunk_tokens: 8 there, 16 now\)"):
        ChromaStore(str(tmp_path / "db")).open("corpus", "e", 8, other)


def test_searching_a_missing_index_says_how_to_build_it(tmp_path):
    with pytest.raises(InputError, match=r"no index 'corpus__e' in store.path=.*python index.py"):
        ChromaStore(str(tmp_path / "none")).open("corpus", "e", 8, CHUNKING, create=False)
    assert not (tmp_path / "none").exists()


def _fill(store: ChromaStore, n_docs: int, seed: int = 0) -> dict[str, int]:
    """Documents of 1–6 chunks with assorted token counts, written as the indexer writes them;
    returns {doc id: registry n_tokens}."""
    rng = np.random.default_rng(seed)
    lengths, ids, metas, registry = {}, [], [], []
    for d in range(n_docs):
        doc_id, n_chunks = f"doc-{seed}-{d}", int(rng.integers(1, 7))
        n_tokens = int(rng.integers(10, 40_000))
        ids += [f"{doc_id}-c{i}" for i in range(n_chunks)]
        metas += [{"doc_id": doc_id, "chunk_index": i, "n_tokens": n_tokens // n_chunks} for i in range(n_chunks)]
        registry.append({"n_chunks": n_chunks, "n_tokens": n_tokens})
        lengths[doc_id] = n_tokens
    store.upsert_chunks(ids, _random_unit(len(ids), 4, seed), [f"text of {c}" for c in ids], metas)
    store.register(list(lengths), _random_unit(n_docs, 4, seed + 1), registry)
    return lengths


def test_chunk_at_is_the_collections_own_order(tmp_path):
    store = ChromaStore(str(tmp_path / "db"), max_batch=5)
    store.open("c", "e", 4, CHUNKING)
    _fill(store, 40)
    total = store.chunks.count()
    assert store.chunk_count() == total
    for position in (0, 1, 17, total - 1):
        old = store.chunks.get(limit=1, offset=position, include=["documents"])  # the OFFSET scan it replaces
        assert store.chunk_at(position) == (old["ids"][0], old["documents"][0])
    with pytest.raises(IndexError, match=f"no chunk at position {total}"):
        store.chunk_at(total)
    assert (tmp_path / "db.sidecar" / "c__e.sqlite").is_file()


def test_pick_documents_draws_uniformly_in_range_and_repeatably(tmp_path):
    store = ChromaStore(str(tmp_path / "db"))
    store.open("c", "e", 4, CHUNKING)
    lengths = _fill(store, 300)
    lo, hi = 2048, 16384
    inside = {d for d, n in lengths.items() if lo <= n <= hi}
    assert 40 < len(inside) < 300
    first = store.pick_documents(lo, hi, random.Random(7), 5)
    assert first == store.pick_documents(lo, hi, random.Random(7), 5)
    assert len(set(first)) == 5 and set(first) <= inside
    hits = collections.Counter(d for seed in range(400) for d in store.pick_documents(lo, hi, random.Random(seed), 3))
    assert set(hits) == inside  # every candidate is reachable …
    assert max(hits.values()) < 6 * 1200 / len(inside)  # … and none is favoured much
    assert set(store.pick_documents(lo, None, random.Random(1), 1000)) == {d for d, n in lengths.items() if n >= lo}
    assert store.pick_documents(50_000, 60_000, random.Random(1), 3) == []
    (narrow,) = [n for d, n in sorted(lengths.items())][:1]
    exact = [d for d, n in lengths.items() if n == narrow]
    assert store.pick_documents(narrow, narrow, random.Random(0), 2) == exact[:2]


def test_an_index_made_before_the_sidecar_gets_it_built_once(tmp_path):
    store = ChromaStore(str(tmp_path / "db"), max_batch=7)
    store.open("c", "e", 4, CHUNKING)
    _fill(store, 30)
    chunks, docs = store.sidecar.chunks(), store.sidecar.docs()
    store.sidecar.close()
    store.sidecar.path.unlink()  # as an index built by an earlier version: no sidecar
    reader = ChromaStore(str(tmp_path / "db"), max_batch=7)  # paged 7 records a call
    reader.open("c", "e", 4, None, create=False)
    assert reader.sidecar.chunks() == chunks and reader.sidecar.docs() == docs
    assert [c for c, _, _ in chunks] == reader.chunks.get(include=[])["ids"]
    built = reader.sidecar.path.stat().st_mtime_ns
    again = ChromaStore(str(tmp_path / "db"))
    again.open("c", "e", 4, None, create=False)
    assert again.sidecar.path.stat().st_mtime_ns == built and again.chunk_count() == len(chunks)
    assert not list(reader.sidecar.path.parent.glob("*.building-*"))


def test_a_recreated_collection_gets_a_new_sidecar(tmp_path):
    store = ChromaStore(str(tmp_path / "db"))
    store.open("c", "e", 4, CHUNKING)
    _fill(store, 10)
    store.client.delete_collection("c__e")
    store.client.delete_collection("c__e.docs")
    fresh = ChromaStore(str(tmp_path / "db"))
    fresh.open("c", "e", 4, CHUNKING)
    assert fresh.chunk_count() == 0 and fresh.pick_documents(0, None, random.Random(0), 5) == []
    _fill(fresh, 3, seed=1)
    assert {d for _, d, _ in fresh.sidecar.chunks()} == {"doc-1-0", "doc-1-1", "doc-1-2"}


def test_a_store_is_a_folder_or_a_server(tmp_path):
    with pytest.raises(InputError, match=r"exactly one of store.path .* or store.host"):
        ChromaStore().open("c", "e", 4, CHUNKING)
    with pytest.raises(InputError, match=r"exactly one of store.path"):
        ChromaStore(str(tmp_path / "db"), host="127.0.0.1").open("c", "e", 4, CHUNKING)
    with pytest.raises(InputError, match=r"store.sidecar is not set"):
        ChromaStore(host="127.0.0.1", port=8000).open("c", "e", 4, CHUNKING)
    assert not list(tmp_path.iterdir())


def test_an_unreachable_server_is_named(tmp_path):
    port = free_port()
    store = ChromaStore(host="127.0.0.1", port=port, sidecar=str(tmp_path / "side"))
    with pytest.raises(InputError, match=rf"Chroma server at http://127.0.0.1:{port} is unreachable.*chroma run"):
        store.open("c", "e", 4, CHUNKING)
    assert not (tmp_path / "side").exists()


def test_a_missing_token_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("SELFLONG_TEST_CHROMA_TOKEN", raising=False)
    store = ChromaStore(host="127.0.0.1", port=free_port(), sidecar=str(tmp_path / "s"),
                        auth_token_env="SELFLONG_TEST_CHROMA_TOKEN")
    with pytest.raises(InputError, match="store.auth_token_env names 'SELFLONG_TEST_CHROMA_TOKEN', which is not set"):
        store.open("c", "e", 4, CHUNKING)


def test_a_server_store_holds_what_an_embedded_one_holds(tmp_path, chroma_server):
    embedded = ChromaStore(str(tmp_path / "db"), max_batch=9)
    remote = ChromaStore(host=chroma_server.host, port=chroma_server.port, sidecar=str(tmp_path / "side"), max_batch=9)
    for store in (embedded, remote):
        store.open("c", "e", 4, CHUNKING)
        _fill(store, 25)
    assert remote.sidecar.path == tmp_path / "side" / "c__e.sqlite"
    assert remote.sidecar.chunks() == embedded.sidecar.chunks() and remote.sidecar.docs() == embedded.sidecar.docs()
    assert [remote.chunk_at(p) for p in range(0, remote.chunk_count(), 7)] == [
        embedded.chunk_at(p) for p in range(0, embedded.chunk_count(), 7)]
    query = _random_unit(1, 4, 99)[0]
    near, far = remote.rank(query, 5), embedded.rank(query, 5)
    assert len(near) == 5 and [(d, c, m) for d, _, c, m in near] == [(d, c, m) for d, _, c, m in far]
    assert [s for _, s, _, _ in near] == pytest.approx([s for _, s, _, _ in far], abs=1e-6)
    picks = [s.pick_documents(1000, 9000, random.Random(3), 4) for s in (remote, embedded)]
    assert picks[0] == picks[1] and len(picks[0]) == 4
    reader = ChromaStore(host=chroma_server.host, port=chroma_server.port, sidecar=str(tmp_path / "side"))
    with pytest.raises(InputError, match=rf"no index 'x__e' in the Chroma server at {chroma_server.url}: build it"):
        reader.open("x", "e", 4, None, create=False)
