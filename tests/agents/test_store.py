import numpy as np
import pytest

from agents.errors import InputError
from agents.store import ChromaStore, collection_name

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
