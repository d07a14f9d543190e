"""An OpenAI-compatible server for tests, on 127.0.0.1, with scripted faults.

`/v1/embeddings` answers with deterministic hashed bag-of-words vectors, so texts sharing words
are close. `/v1/chat/completions` recognises each synthesis role by its prompt and answers it
deterministically from the text it was given. Faults, latency and the API key are set through
`ServerControl` by the test that owns the server; it also records the peak of requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import socket
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

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
    chat_requests: int = 0  # chat requests received
    chat_latency: float = 0.0  # seconds added to each chat request
    fault_rate: float = 0.0  # share of chat requests that get a fault
    fault_kinds: tuple[str, ...] = ("500", "429", "timeout", "malformed", "empty", "refusal", "truncate")
    fault_seed: int = 0
    # faults decided by the request's messages: the same request fails every time (through the client's retries,
    # and on a resumed run) until the server is made healthy; `fault_rate` is then the share of distinct requests
    sticky_faults: bool = False
    timeout_sleep: float = 1.5  # how long a "timeout" fault stalls
    reject_response_format: bool = False  # answer 400 to requests that carry response_format
    saw_response_format: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    faults: dict[str, int] = field(default_factory=dict)  # fault kind -> times injected
    bodies: list[dict] = field(default_factory=list)  # chat request bodies, when record_bodies
    record_bodies: bool = False
    busy_seconds: float = 0.0  # summed duration of chat requests (mean in flight = busy / wall)
    answer_mode: str = "oracle"  # evaluation replies: "oracle" (the needle's answer) or "wrong"
    completion_requests: int = 0  # /v1/completions requests received
    qa_answers: dict = field(default_factory=dict)  # question -> answer, for RULER's QA tasks
    instruction_pool: int = 0  # > 0: instructions come from this many fixed texts, picked by the passage (collide)
    models_status: int | None = None  # when set, GET /v1/models answers this HTTP status with an error body
    models_empty: bool = False  # GET /v1/models answers an empty list
    served_models: tuple[str, ...] | None = None  # when set, chat for another model answers 404 as vLLM does
    acer_reasoning_words: int = 0  # > 0: ACER reasoning is padded to about this many words (a long answer)
    verdict: str = "yes"  # judge calls (synth.verify): "yes" supported, "no" not
    _rng: random.Random | None = None

    def reset(self) -> None:
        """Back to a healthy, fast, open server with zeroed counters."""
        fresh = ServerControl()
        for name in self.__dataclass_fields__:
            # an earlier test's requests may still run
            if name not in ("inputs", "faults", "bodies", "in_flight", "qa_answers"):
                setattr(self, name, getattr(fresh, name))
        self.inputs.clear()
        self.faults.clear()
        self.bodies.clear()
        self.qa_answers.clear()

    def draw_fault(self, request: str = "") -> str | None:
        """The fault for the next chat request, if any (seeded, so runs are repeatable); with `sticky_faults`, a
        function of the request's text alone."""
        if self.sticky_faults:
            h = zlib.crc32(f"{self.fault_seed}:{request}".encode())
            if (h % 1_000_000) / 1_000_000 >= self.fault_rate:
                return None
            kind = self.fault_kinds[(h // 1_000_000) % len(self.fault_kinds)]
            self.faults[kind] = self.faults.get(kind, 0) + 1
            return kind
        if self._rng is None:
            self._rng = random.Random(self.fault_seed)
        if self.fault_rate and self._rng.random() < self.fault_rate:
            kind = self.fault_kinds[sum(self.faults.values()) % len(self.fault_kinds)]  # each kind in turn
            self.faults[kind] = self.faults.get(kind, 0) + 1
            return kind
        return None


_WORDS = re.compile(r"[A-Za-z][A-Za-z_]{3,}")
# `instruction_pool` replies (a pool above 8 repeats them): apart by 3-grams and by hashed-embedding cosine (< 0.8)
_POOL_TOPICS = ("sorting lists with key functions and stable comparisons",
                "network sockets servers clients and their ports", "decimal rounding precision and arithmetic contexts",
                "regular expression groups flags and lookahead patterns", "threads locks queues and executor pools",
                "dates times calendars and time zones", "compressed archives in zip tar and gzip formats",
                "unit tests fixtures mocks and assertion helpers")


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0] if start in text else text


def scripted_reply(messages: list[dict], reasoning_words: int = 0) -> tuple[str, bool]:
    """(reply, is_json) for a synthesis prompt, decided only by the prompt's text (ACER's reasoning padded to
    `reasoning_words` words when given)."""
    original = next(m["content"] for m in messages if m["role"] == "user")
    words = _WORDS.findall
    if "Write one realistic request" in original:
        picked = list(dict.fromkeys(w.lower() for w in words(_between(original, "<passage>", "</passage>"))))[:10]
        text = "Using several documents, explain " + " ".join(picked) + " and how these ideas connect."
        return json.dumps({"instruction": text}), True
    if "You are gathering material" in original:
        body = _between(original, "<text>", "</text>")
        if "Relevant notes:" not in body and zlib.crc32(body.encode()) % 7 == 0:  # summaries stay relevant
            return "NOTHING_RELEVANT", False
        return "Relevant notes: " + " ".join(body.split()[:40]), False
    if "Notes gathered from a large collection" in original:
        notes = _between(original, "<notes>", "</notes>")
        return "Drawing on several documents, the answer is as follows. " + " ".join(notes.split()[:60]), False
    if "Below is a piece of writing" in original:
        topic = " ".join(words(_between(original, "<text>", "</text>"))[:12])
        return json.dumps({"instruction": f"Write a long, detailed technical document covering {topic}."}), True
    if "Passages retrieved from a long context" in original:
        label, _, passage = _between(original, "<passage>\n", "</passage>").partition("\n")  # the first, its label
        reasoning = f"{label} is the most relevant: " + " ".join(passage.split()[:30])
        padding = passage.split() or ["because"]
        reasoning += "".join(f" {padding[i % len(padding)]}" for i in range(max(0, reasoning_words - 36)))
        return json.dumps({"reasoning": reasoning, "answer": " ".join(passage.split()[:5]) or "unknown"}), True
    return "", False


def evaluation_reply(text: str, control: ServerControl) -> str:
    """The reply to an evaluation prompt: its answer found in the prompt (`answer_mode="oracle"`), or a
    reply holding none of it ("wrong")."""
    if control.answer_mode == "wrong":
        return " I could not find it."
    from tests.evals.oracle import solve_any

    found = solve_any(text, control.qa_answers)
    return f" {found}" if found else " I only know the selflong prompts."


def build_app(control: ServerControl) -> FastAPI:
    """The FastAPI app behind `ServerControl`."""
    app = FastAPI()

    def authorised(request: Request) -> bool:
        return control.api_key is None or request.headers.get("authorization") == f"Bearer {control.api_key}"

    @app.get("/v1/models")
    async def models(request: Request):
        if control.models_status is not None:  # before the key check, as a server whose /models is broken
            return JSONResponse({"error": {"message": "injected /models failure"}}, status_code=control.models_status)
        if not authorised(request):
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        served = [{"id": name, "object": "model", "owned_by": "tests"} for name in ("hash-embed", "scripted")]
        return {"object": "list", "data": [] if control.models_empty else served}

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

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not authorised(request):
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        body = await request.json()
        began = time.perf_counter()
        control.chat_requests += 1
        if control.record_bodies:
            control.bodies.append(body)
        if control.served_models is not None and body.get("model") not in control.served_models:
            return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                           "type": "NotFoundError", "code": 404}}, status_code=404)
        control.in_flight += 1
        control.peak_in_flight = max(control.peak_in_flight, control.in_flight)
        try:
            if body.get("response_format"):
                control.saw_response_format += 1
                if control.reject_response_format:
                    return JSONResponse({"error": {"message": "response_format is not supported"}}, status_code=400)
            if control.chat_latency:
                await asyncio.sleep(control.chat_latency)
            fault = control.draw_fault(json.dumps(body["messages"]))
            if fault == "500":
                return JSONResponse({"error": {"message": "injected 500"}}, status_code=500)
            if fault == "429":
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"})
            if fault == "timeout":
                await asyncio.sleep(control.timeout_sleep)
            content, is_json = scripted_reply(body["messages"], control.acer_reasoning_words)
            if body["messages"][-1]["content"].startswith("You are checking"):  # a judge call (synth.verify)
                content, is_json = json.dumps({"supported": control.verdict == "yes", "reason": "scripted"}), True
            if control.instruction_pool and is_json and '"instruction"' in content and "passage>" in str(body):
                pick = zlib.crc32(json.dumps(body["messages"]).encode()) % control.instruction_pool
                # distinct topics: pool texts are near-duplicates of themselves only (by 3-grams and by meaning)
                topic = _POOL_TOPICS[pick % len(_POOL_TOPICS)]
                content = json.dumps({"instruction": f"Using several documents, explain {topic}."})
            if not content:  # not a synthesis prompt: an evaluation one
                content = evaluation_reply(body["messages"][-1]["content"], control).strip()
            finish = "stop"
            if fault == "malformed" and is_json:
                content = content[: len(content) // 2]
            elif fault == "empty":
                content = ""
            elif fault == "refusal":
                content = "I'm sorry, but I can't help with that request."
            elif fault == "truncate":
                content, finish = content[: len(content) // 2], "length"
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
            return {
                "id": f"chat-{control.chat_requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                          "total_tokens": prompt_tokens + len(content.split())},
            }
        finally:
            control.in_flight -= 1
            control.busy_seconds += time.perf_counter() - began

    @app.post("/v1/completions")
    async def completions(request: Request):
        if not authorised(request):
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        body = await request.json()
        control.completion_requests += 1
        control.in_flight += 1
        control.peak_in_flight = max(control.peak_in_flight, control.in_flight)
        try:
            if control.record_bodies:
                control.bodies.append(body)
            if control.chat_latency:
                await asyncio.sleep(control.chat_latency)
            if control.draw_fault() == "500":
                return JSONResponse({"error": {"message": "injected 500"}}, status_code=500)
            text = evaluation_reply(body["prompt"], control)
            return {"id": f"cmpl-{control.completion_requests}", "object": "text_completion",
                    "created": int(time.time()), "model": body["model"],
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(body["prompt"].split()) + len(text.split())}}
        finally:
            control.in_flight -= 1

    @app.get("/debug/control")
    async def debug_control():
        """Counters and recorded bodies, for a benchmark running the server in another process."""
        return {"chat_requests": control.chat_requests, "completion_requests": control.completion_requests,
                "peak_in_flight": control.peak_in_flight,
                "busy_seconds": control.busy_seconds, "bodies": control.bodies}

    @app.post("/debug/reset")
    async def debug_reset():
        latency, record = control.chat_latency, control.record_bodies
        control.reset()
        control.chat_latency, control.record_bodies = latency, record
        return {"ok": True}

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


def serve_in_process(latency: float = 0.0, record_bodies: bool = False) -> tuple[subprocess.Popen, str]:
    """The scripted endpoint in a process of its own (for benchmarks: no GIL shared with the client), up and
    answering; returns the process (terminate it when done) and its URL ending in /v1."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "tests.servers", "--port", str(port), "--chat-latency", str(latency)]
    proc = subprocess.Popen(cmd + (["--record-bodies"] if record_bodies else []), cwd=Path(__file__).parents[1])
    for _ in range(400):
        try:
            httpx.get(f"{url}/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("the scripted server did not start")


def main() -> None:
    """Serve the scripted endpoint in the foreground: python -m tests.servers --port P [--chat-latency S]."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chat-latency", type=float, default=0.0)
    parser.add_argument("--record-bodies", action="store_true")
    args = parser.parse_args()
    control = ServerControl(chat_latency=args.chat_latency, record_bodies=args.record_bodies)
    uvicorn.run(build_app(control), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
