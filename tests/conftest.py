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


def compose(config: str, overrides: list[str]):
    """A shipped config composed as its entry point composes it (resolvers registered)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from evals.evaluation import register_resolvers
    from lightning_modules.stages import register_resolvers as register_train_resolvers

    register_resolvers()
    register_train_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def write_passkey(path: Path, seq_len: int, samples: int, seed: int = 0) -> Path:
    """The passkey task's training JSONL for model=tiny, as `evaluate.py task=passkey export_training=` writes it."""
    from omegaconf import OmegaConf

    from evals.evaluation import export_training
    from lightning_modules.model import load_tokenizer

    if path.exists():
        return path
    cfg = compose("evaluate", ["task=passkey"])
    task = OmegaConf.to_container(cfg.task, resolve=True)
    return export_training(str(path), load_tokenizer(cfg.export.tokenizer), task, seq_len, samples,
                           cfg.export.min_fraction, seed)


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2 embedder, loaded once for the whole run."""
    from agents.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(name="all-MiniLM-L6-v2")
    assert embedder.dimension == 384
    return embedder


@pytest.fixture
def chroma_server(tmp_path_factory):
    """A real Chroma server (`chroma run`) on a free 127.0.0.1 port with an empty temporary database, stopped
    after the test: `.host`, `.port`, `.url`, `.path`, and `.overrides(sidecar)` for index.py/synthesize.py."""
    from tests.chroma_server import RunningChroma

    with RunningChroma(tmp_path_factory.mktemp("chroma-server") / "db") as running:
        yield running


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
    embed_server.control.reset()
    return embed_server


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A small byte-level BPE tokenizer with a chat template, saved like a model's and loaded through
    `from_pretrained` — the stand-in for a target model's tokenizer."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from agents.tokens import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(topics.values(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def topics_index(tmp_path_factory, embed_server, minilm_tokenizer):
    """The pydoc topics indexed with the server's hashed embeddings: (store path, embedder spec)."""
    from agents.chunker import TokenChunker
    from agents.corpus import PythonDocsCorpus
    from agents.embedder import OpenAIEmbedder
    from agents.indexer import index_corpus
    from agents.store import ChromaStore

    embed_server.control.reset()  # an earlier test may have left faults set
    spec = {"_target_": "agents.embedder.OpenAIEmbedder", "model": "hash-embed", "base_url": embed_server.url,
            "name": "hash-embed", "query_prefix": "", "max_retries": 0, "tokenizer": minilm_tokenizer}
    embedder = OpenAIEmbedder(**{k: v for k, v in spec.items() if k != "_target_"})
    path = tmp_path_factory.mktemp("topics-index") / "chroma"
    corpus = PythonDocsCorpus(docstrings=False)
    index_corpus(corpus, TokenChunker(minilm_tokenizer), embedder, ChromaStore(str(path)), progress=False)
    return str(path), spec


@pytest.fixture(scope="session")
def bf16_flash_step():
    """Real training steps of a tiny Llama (Triton interpreter on CPU): bf16-mixed and fp32 with attention=flash,
    and bf16-mixed with the ring's Triton blocks in one process (its partial outputs are fp32):
    {"bf16": (loss, launches, grads), "fp32": (...), "ring_bf16": (...)}."""
    from tests.lightning_modules.steps import step

    return {"bf16": step("flash", True), "fp32": step("flash", False), "ring_bf16": step("ring", True)}
