"""Shared fixtures. Environment first: Triton's interpreter must be chosen before any kernel is
decorated, and nothing may be fetched from a hub."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from tests.servers import RunningServer, ServerControl, build_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2 embedder, loaded once for the whole run."""
    from agents.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(name="all-MiniLM-L6-v2")
    assert embedder.dimension == 384
    return embedder


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """Path of the bundled MiniLM tokenizer folder."""
    from agents.embedder import minilm_path

    return str(minilm_path())


@pytest.fixture(scope="session")
def embed_server():
    """A scripted OpenAI-compatible embeddings server on 127.0.0.1 for the whole run."""
    control = ServerControl()
    with RunningServer(build_app(control)) as server:
        server.control = control
        yield server


@pytest.fixture
def server(embed_server):
    """The shared server with its script reset for one test."""
    control = embed_server.control
    control.api_key, control.fail_after, control.latency = None, None, 0.0
    control.requests = 0
    control.inputs.clear()
    return embed_server
