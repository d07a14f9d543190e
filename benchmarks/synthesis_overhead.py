"""What does the synthesis machinery cost on top of the endpoint's own latency?

    python benchmarks/synthesis_overhead.py [--samples 120] [--latency 0.05] [--cap 64]

Starts the scripted OpenAI-compatible server (tests/servers.py) in its own process with a fixed
latency per chat request, indexes the pydoc topics with its hashed embeddings, then runs, on the
same calls:
  1. bare:   a plain asyncio + openai loop, the recorded requests, at most `cap` in flight;
  2. client: our LLMClient (request cap, call cache) replaying the same requests;
  3. graph:  the full SelfLong graph (retrieval, tokenization, QFS fan-out) making them.
It prints peak and mean requests in flight, throughput relative to the bare loop, and overhead
per call = (time - bare time) / calls.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx
from openai import AsyncOpenAI

from agents.chunker import TokenChunker
from agents.corpus import PythonDocsCorpus
from agents.embedder import OpenAIEmbedder, minilm_path
from agents.indexer import index_corpus
from agents.llm import LLMClient
from agents.store import ChromaStore
from graphs import synthesis
from graphs.context import SynthContext
from graphs.resources import resources
from graphs.run import make_jobs, output_paths, run_jobs
from tests.servers import serve_in_process


def control(url: str) -> dict:
    """The server's counters."""
    return httpx.get(url.replace("/v1", "/debug/control"), timeout=30).json()


def reset(url: str) -> None:
    """Zero the server's counters."""
    httpx.post(url.replace("/v1", "/debug/reset"), timeout=30)


async def bare_loop(url: str, bodies: list[dict], cap: int) -> float:
    """The baseline: the same requests through a bare AsyncOpenAI client and a semaphore."""
    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    gate = asyncio.Semaphore(cap)

    async def one(body: dict) -> None:
        async with gate:
            await client.chat.completions.create(**body)

    start = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


async def client_replay(url: str, bodies: list[dict], cap: int, cache: str) -> float:
    """Our LLMClient making the same requests (fresh cache, so every call goes out)."""
    llm = LLMClient(base_url=url, model=bodies[0]["model"], max_in_flight=cap, cache_path=cache, max_retries=0)
    start = time.perf_counter()

    async def one(body: dict) -> None:
        llm.temperature, llm.max_tokens = body["temperature"], body["max_tokens"]
        await llm._complete(body["messages"], body.get("response_format"), body["max_tokens"])

    await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.perf_counter() - start
    await llm.aclose()
    return elapsed


def main() -> None:
    """Run the three measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--target", type=int, default=3000, help="sample length in MiniLM tokens")
    args = parser.parse_args()

    server, url = serve_in_process(args.latency, record_bodies=True)
    try:
        tmp = Path(tempfile.mkdtemp())
        spec = {"_target_": "agents.embedder.OpenAIEmbedder", "model": "hash-embed", "base_url": url,
                "name": "hash-embed", "query_prefix": "", "tokenizer": str(minilm_path())}
        embedder = OpenAIEmbedder(**{k: v for k, v in spec.items() if k != "_target_"})
        index_corpus(PythonDocsCorpus(docstrings=False), TokenChunker(str(minilm_path())), embedder,
                     ChromaStore(str(tmp / "chroma")), progress=False)
        ctx = SynthContext(
            llm_base_url=url, llm_model="scripted", llm_max_in_flight=args.cap, llm_max_retries=0,
            cache_path=str(tmp / "graph-cache.sqlite"),
            store=json.dumps({"_target_": "agents.store.ChromaStore", "path": str(tmp / "chroma")}),
            corpus="python_docs",
            embedder=json.dumps(spec), qfs_chunk_tokens=512, qfs_budget_tokens=1024,
            answer_max_tokens=min(2048, args.target // 4),  # the scripted answers are short
        )
        reset(url)
        jobs = make_jobs("selflong", args.samples, [args.target], 0, 1)
        samples, rejected = output_paths(tmp / "out", 0, 1)
        # one-time start-up (importing transformers, loading the tokenizer, opening the index) is paid before the
        # clock starts: the table compares steady-state throughput; the start-up is printed on its own
        warm_start = time.perf_counter()
        resources(ctx).warm()
        warm_s = time.perf_counter() - warm_start
        start, cpu = time.perf_counter(), time.process_time()
        summary = asyncio.run(run_jobs(synthesis.graph, ctx, "selflong", jobs, samples, rejected,
                                       samples_in_flight=args.samples, progress=False))
        graph_s, graph_cpu = time.perf_counter() - start, time.process_time() - cpu
        encoded = resources(ctx).counter.tokens_encoded
        graph_stats = control(url)
        bodies = [b for b in graph_stats["bodies"]]
        calls = len(bodies)

        reset(url)
        bare_s = asyncio.run(bare_loop(url, bodies, args.cap))
        bare_stats = control(url)
        reset(url)
        client_s = asyncio.run(client_replay(url, bodies, args.cap, str(tmp / "replay-cache.sqlite")))
        client_stats = control(url)
    finally:
        server.terminate()
        server.wait()

    ideal = calls * args.latency / args.cap
    print(f"scripted server in its own process, {args.latency * 1000:.0f} ms per chat request, cap {args.cap}; "
          f"{summary.samples} samples ({summary.rejected} rejected), {calls} chat calls; ideal time {ideal:.2f}s")
    print(f"{'run':<8}{'seconds':>9}{'calls/s':>10}{'vs bare':>9}{'peak':>6}{'mean':>7}{'ms/call over bare':>19}")
    for name, secs, stats in [("bare", bare_s, bare_stats), ("client", client_s, client_stats),
                              ("graph", graph_s, graph_stats)]:
        mean = stats["busy_seconds"] / secs
        over = (secs - bare_s) / calls * 1000
        print(f"{name:<8}{secs:>9.2f}{calls / secs:>10.1f}{bare_s / secs:>9.3f}{stats['peak_in_flight']:>6}"
              f"{mean:>7.1f}{over:>19.2f}")
    print("peak/mean = requests in flight seen by the server; 'vs bare' = throughput relative to the bare loop")
    print(f"graph: start-up (tokenizer, embedder, index) {warm_s:.2f}s, before the clock; client CPU "
          f"{graph_cpu / max(1, summary.samples) * 1000:.1f} ms per sample (all threads); "
          f"tokens tokenized per sample token {encoded / max(1, summary.sample_tokens):.2f} "
          f"({encoded} for {summary.sample_tokens})")


if __name__ == "__main__":
    main()
