"""What does the evaluation runner cost on top of the endpoint's own latency?

    python benchmarks/eval_throughput.py [--samples 400] [--latency 0.05] [--cap 32] [--length 2048]

Starts the scripted OpenAI-compatible server (tests/servers.py) in its own process with a fixed latency per
request, makes passkey NIAH samples with the byte tokenizer, then sends the same prompts to /v1/completions:
  1. bare:    a plain asyncio + openai loop, at most `cap` in flight;
  2. runner:  evals.runner.run_plan (client cap, predictions.jsonl appended per reply, scoring, progress),
              on samples made beforehand;
  3. +make:   the same with the samples made lazily in the runner's worker thread, as evaluate.py runs.
Prints examples per second and throughput relative to the bare loop (goal: runner >= 0.9x).
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openai import AsyncOpenAI

from evals.client import EvalClient
from evals.haystack import passkey_haystack
from evals.prompting import PromptFormat
from evals.runner import run_plan
from evals.tasks import Plan, niah_plan
from lightning_modules.byte_tokenizer import byte_tokenizer
from tests.conftest import compose
from tests.servers import serve_in_process


async def bare_loop(url: str, prompts: list[str], max_tokens: int, cap: int) -> float:
    """The baseline: the same prompts through a bare AsyncOpenAI client and a semaphore."""
    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    gate = asyncio.Semaphore(cap)

    async def one(prompt: str) -> None:
        async with gate:
            await client.completions.create(model="scripted", prompt=prompt, max_tokens=max_tokens, temperature=0.0)

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def timed_run(plan: Plan, url: str, cap: int, folder: Path) -> float:
    """Seconds for run_plan over the whole plan into a fresh folder."""
    client = EvalClient(url, "scripted", max_in_flight=cap, max_retries=0)

    async def go() -> None:
        try:
            await run_plan(plan, client, folder / "predictions.jsonl", progress=False)
        finally:
            await client.aclose()

    folder.mkdir(parents=True)
    start = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - start


def main() -> None:
    """Run the three measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--cap", type=int, default=32)
    parser.add_argument("--length", type=int, default=2048)
    args = parser.parse_args()

    from omegaconf import OmegaConf

    task = OmegaConf.to_container(compose("evaluate", ["task=passkey"]).task, resolve=True)
    fmt = PromptFormat(byte_tokenizer())
    depths = 10
    lazy = niah_plan(fmt, passkey_haystack("eval"), task["needle"], "passkey", [args.length], depths,
                     args.samples // depths, seed=0)
    start = time.perf_counter()
    made = {cell: lazy.make(cell) for cell in lazy.cells}
    make_s = time.perf_counter() - start
    ready = Plan(lazy.cells, lazy.per_cell, made.__getitem__, {})
    prompts = [s.prompt for samples in made.values() for s in samples]

    server, url = serve_in_process(args.latency)
    try:
        tmp = Path(tempfile.mkdtemp())
        bare_s = asyncio.run(bare_loop(url, prompts, task["needle"]["max_tokens"], args.cap))
        runner_s = timed_run(ready, url, args.cap, tmp / "ready")
        lazy_s = timed_run(lazy, url, args.cap, tmp / "lazy")
    finally:
        server.terminate()
        server.wait()
    n = len(prompts)
    print(f"scripted server in its own process, {args.latency * 1000:.0f} ms per request, cap {args.cap}; {n} passkey "
          f"samples of {args.length} byte tokens; making them alone took {make_s:.2f}s; ideal "
          f"{n * args.latency / args.cap:.2f}s")
    print(f"{'run':<8}{'seconds':>9}{'examples/s':>12}{'vs bare':>9}")
    for name, secs in [("bare", bare_s), ("runner", runner_s), ("+make", lazy_s)]:
        print(f"{name:<8}{secs:>9.2f}{n / secs:>12.1f}{bare_s / secs:>9.3f}")


if __name__ == "__main__":
    main()
