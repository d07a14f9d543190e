import shutil

import numpy as np
import pytest

from agents.embedder import MINILM_SHA256, OpenAIEmbedder, SentenceTransformerEmbedder, minilm_path
from agents.errors import InputError
from tests.servers import EMBED_DIM, free_port, hashed_embedding


def test_minilm_embeddings_are_normalised_and_meaningful(minilm):
    vecs = minilm.embed_documents(
        ["The cat sits on the mat.", "A feline is resting on a rug.", "Stock markets fell sharply today."]
    )
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3
    assert minilm.expected_sha256 == MINILM_SHA256


def test_weights_with_another_hash_are_refused(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(minilm_path(), model, ignore=shutil.ignore_patterns("model.safetensors"))
    (model / "model.safetensors").write_bytes(b"not the weights")
    embedder = SentenceTransformerEmbedder(path=str(model), sha256=MINILM_SHA256)
    with pytest.raises(InputError, match=r"model\.safetensors has sha256 .* expected 53aa5117"):
        embedder.dimension


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(InputError, match=r"embedder\.path .*absent is not a folder"):
        SentenceTransformerEmbedder(path=str(tmp_path / "absent")).dimension


def test_openai_endpoint_embeds_in_batches_with_query_prefix(server, monkeypatch):
    server.control.api_key = "sk-test-123"
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-test-123")
    embedder = OpenAIEmbedder(
        model="hash-embed", base_url=server.url, api_key_env="TEST_EMBED_KEY", batch_size=2,
        query_prefix="Query: ", max_retries=0,
    )
    assert embedder.dimension == EMBED_DIM
    server.control.requests = 0
    docs = ["rivers and lakes", "mountain peaks", "deep oceans", "lakes and rivers", "sand"]
    vecs = embedder.embed_documents(docs)
    assert vecs.shape == (5, EMBED_DIM) and server.control.requests == 3
    assert np.allclose(vecs[0], hashed_embedding(docs[0]), atol=1e-6)
    assert vecs[0] @ vecs[3] == pytest.approx(1.0, abs=1e-5)
    embedder.embed_queries(["where are the lakes"])
    assert server.control.inputs[-1] == "Query: where are the lakes"


def test_rejected_key_names_the_url_and_variable(server, monkeypatch):
    server.control.api_key = "right"
    monkeypatch.setenv("TEST_EMBED_KEY", "wrong")
    embedder = OpenAIEmbedder(model="m", base_url=server.url, api_key_env="TEST_EMBED_KEY", max_retries=0)
    with pytest.raises(InputError, match=rf"{server.url} rejected the API key: set .*TEST_EMBED_KEY"):
        embedder.dimension


def test_unreachable_endpoint_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    embedder = OpenAIEmbedder(model="m", base_url=url, max_retries=0, timeout=5)
    with pytest.raises(InputError, match=rf"embeddings endpoint {url} is unreachable"):
        embedder.dimension
