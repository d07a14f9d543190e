"""An OpenAI-compatible server for tests, on 127.0.0.1, with scripted faults.

`/v1/embeddings` answers with deterministic hashed bag-of-words vectors, so texts sharing words
are close. Faults are set through `ServerControl` by the test that owns the server.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

EMBED_DIM = 64


def hashed_embedding(text: str, dim: int = EMBED_DIM) -> list[float]:
    """Bag of words hashed into `dim` buckets, L2-normalised (all-zero text gives bucket 0)."""
    vec = np.zeros(dim, dtype=np.float64)
    for word in re.findall(r"\w+", text.lower()):
        vec[zlib.crc32(word.encode()) % dim] += 1.0
    if not vec.any():
        vec[0] = 1.0
    return (vec / np.linalg.norm(vec)).tolist()


@dataclass
class ServerControl:
    """What the scripted server does; tests change it between calls."""

    api_key: str | None = None  # when set, requests must carry it
    fail_after: int | None = None  # embedding requests served before every later one gets 500
    latency: float = 0.0  # seconds added to each embeddings request
    requests: int = 0  # embedding requests received
    inputs: list[str] = field(default_factory=list)  # every text embedded, in order


def build_app(control: ServerControl) -> FastAPI:
    """The FastAPI app behind `ServerControl`."""
    app = FastAPI()

    def authorised(request: Request) -> bool:
        return control.api_key is None or request.headers.get("authorization") == f"Bearer {control.api_key}"

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorised(request):
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        return {"object": "list", "data": [{"id": "hash-embed", "object": "model", "owned_by": "tests"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        if not authorised(request):
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        control.requests += 1
        if control.fail_after is not None and control.requests > control.fail_after:
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
        if control.latency:
            await asyncio.sleep(control.latency)
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        control.inputs.extend(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": hashed_embedding(t)} for i, t in enumerate(texts)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "hash-embed"),
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    return app


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A uvicorn server in a daemon thread; `url` ends in /v1."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            threading.Event().wait(0.01)
        raise RuntimeError("test server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
