"""Run a synthesis graph over many samples: bounded concurrency, one writer, resumable, sharded.

Sample `i` of a run belongs to shard `i % num_shards`, so shards never overlap. Samples already in
the output (or rejected) are skipped, finished LLM calls come back from the cache, and each result
is appended by this one coroutine as soon as it is known — so a run killed at any moment and
started again ends with every sample exactly once.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agents.instructions import InOrder
from agents.samples import JsonlWriter
from graphs.context import SynthContext
from graphs.resources import resources

KINDS = {"selflong": "long_input", "backtranslation": "long_output", "acer": "acer"}


class RunStopped(Exception):
    """The run was stopped early because too many samples failed."""


@dataclass
class RunSummary:
    """Counts and rates of one run, printed at its end."""

    samples: int = 0
    rejected: int = 0
    already_done: int = 0
    calls: int = 0  # answered by the endpoint
    cached_calls: int = 0
    failed_calls: int = 0  # no usable reply after the client's retries (refused, cut, invalid, HTTP errors)
    requests: int = 0  # HTTP requests sent, retries included
    retried_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sample_tokens: int = 0
    peak_in_flight: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The closing summary."""
        per_hour = self.samples / self.seconds * 3600 if self.seconds else 0.0
        return (
            f"samples={self.samples} rejected={self.rejected} already_done={self.already_done} "
            f"calls={self.calls} failed_calls={self.failed_calls} cached_calls={self.cached_calls} "
            f"requests={self.requests} retried_requests={self.retried_requests} tokens_in={self.prompt_tokens} "
            f"tokens_out={self.completion_tokens} sample_tokens={self.sample_tokens} "
            f"peak_in_flight={self.peak_in_flight} seconds={self.seconds:.1f} samples_per_hour={per_hour:.0f}"
        )


def length_ranges(target_lengths: Sequence[Any]) -> list[tuple[int, int, float]] | None:
    """`synth.target_lengths` as (min, max, weight) ranges, or None when it is a plain list of lengths.

    Entries: a length (`131072`: assigned round-robin when every entry is one, else a range of one length, weight
    1), `[min, max]` (weight 1) or `{min, max, weight}`. Bad entries raise `InputError` naming the key."""
    from agents.errors import InputError

    if not target_lengths:
        raise InputError("synth.target_lengths is empty: give lengths ([131072]) or ranges ([{min, max, weight}])")
    if all(isinstance(t, int) for t in target_lengths):
        return None
    ranges = []
    for i, t in enumerate(target_lengths):
        if isinstance(t, int):
            t = {"min": t, "max": t}
        elif isinstance(t, Sequence) and not isinstance(t, str) and len(t) == 2:
            t = {"min": t[0], "max": t[1]}
        if not isinstance(t, dict) or set(t) - {"min", "max", "weight"} or not {"min", "max"} <= set(t):
            raise InputError(f"synth.target_lengths[{i}] = {t!r}: give a length, [min, max] or {{min, max, weight}}")
        lo, hi, w = t["min"], t["max"], t.get("weight", 1.0)
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 < lo <= hi) or not w > 0:
            raise InputError(f"synth.target_lengths[{i}]: need 0 < min <= max (integers) and weight > 0, got {t!r}")
        ranges.append((lo, hi, float(w)))
    return ranges


def target_length(target_lengths: Sequence[Any], index: int, seed: int) -> int:
    """Sample `index`'s target length: `target_lengths[index % len]` for plain lengths; for ranges, one drawn by
    weight and then a length uniformly within it, both from the seed and the index alone."""
    ranges = length_ranges(target_lengths)
    if ranges is None:
        return int(target_lengths[index % len(target_lengths)])
    rng = random.Random(f"{seed}:{index}:length")
    lo, hi, _ = rng.choices(ranges, weights=[w for _, _, w in ranges])[0]
    return rng.randint(lo, hi)


def check_answer_reserve(jobs: Sequence[dict[str, Any]], answer_max_tokens: int) -> None:
    """Refuse a run whose answer reserve leaves a sample less than half its target for documents."""
    from agents.errors import InputError

    for job in jobs:
        if job.get("target_tokens") and 2 * answer_max_tokens > job["target_tokens"]:
            raise InputError(f"synth.answer_max_tokens={answer_max_tokens} leaves less than half of sample "
                             f"{job['index']}'s {job['target_tokens']}-token target for documents; lower it or "
                             f"raise synth.target_lengths")


def make_jobs(mode: str, num_samples: int, target_lengths: Sequence[Any], shard: int, num_shards: int,
              acer_records: Sequence[dict[str, str]] = (), seed: int = 0) -> list[dict[str, Any]]:
    """Graph inputs of this shard, each with its `target_length`."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"synth.shard={shard} must be in [0, synth.num_shards={num_shards})")
    if mode == "acer":
        items = [{"index": i, **r} for i, r in enumerate(acer_records)]
        for item in items:
            item["target_tokens"] = None if item["context"] else target_length(target_lengths, item["index"], seed)
    elif mode == "backtranslation":
        items = [{"index": i} for i in range(num_samples)]
    else:
        items = [{"index": i, "target_tokens": target_length(target_lengths, i, seed)} for i in range(num_samples)]
    return [item for item in items if item["index"] % num_shards == shard]


def output_paths(out_dir: str | Path, shard: int, num_shards: int) -> tuple[Path, Path]:
    """(samples, rejected) JSONL paths of a shard."""
    suffix = "" if num_shards == 1 else f".shard{shard}-of-{num_shards}"
    out = Path(out_dir)
    return out / f"samples{suffix}.jsonl", out / f"rejected{suffix}.jsonl"


# What an endpoint failure's reason says (rejections written before rejections carried their `cause`).
_ENDPOINT_REASON = re.compile(r"HTTP \d{3}|timeout after|connection to|refusal:|truncated:|empty content|"
                              r"invalid structured output|response without choices|summaries failed")


def endpoint_failure(rejection: dict[str, Any]) -> bool:
    """Whether a rejected record's reason was the endpoint giving no usable reply (not a content check)."""
    cause = rejection.get("cause")
    return cause == "endpoint" if cause else bool(_ENDPOINT_REASON.search(str(rejection.get("reason", ""))))


async def run_jobs(graph, ctx: SynthContext, mode: str, jobs: Sequence[dict[str, Any]], samples_path: Path,
                   rejected_path: Path, samples_in_flight: int = 32, max_error_rate: float = 0.5,
                   min_finished_for_stop: int = 20, progress: bool = True, retry_rejected: bool = False,
                   ) -> RunSummary:
    """Run `graph` once per job and append results; returns the summary.

    Samples already written are skipped, and so are rejected ones unless `retry_rejected` and the endpoint caused
    the rejection. Raises InputError (from the preflight) before anything is written when the endpoint is
    unusable, and RunStopped when the rejection rate passes `max_error_rate`.
    """
    start = time.perf_counter()
    kind = KINDS[mode]
    check_answer_reserve(jobs, ctx.answer_max_tokens)
    res = resources(ctx)
    await res.llm.preflight()
    # tokenizer, embedder and store ready before the first sample (ACER over given contexts needs no index)
    await asyncio.to_thread(res.warm, kind != "acer" or any(not job.get("context") for job in jobs))
    # reopening reads the files' small index sidecars (ids, indices, instructions), never the samples
    samples = JsonlWriter(samples_path, keep=("instruction",))
    rejected = JsonlWriter(rejected_path, keep=("instruction", "reason", "cause"))
    ids = {id(job): ctx.sample_id(kind, job["index"], job.get("target_tokens")) for job in jobs}
    again = {r["id"] for r in rejected.records if retry_rejected and endpoint_failure(r)} - samples.ids
    todo = sorted((job for job in jobs if ids[id(job)] not in samples.ids
                   and (ids[id(job)] not in rejected.ids or ids[id(job)] in again)), key=lambda job: job["index"])
    if kind == "long_input":  # near-duplicates are judged against lower indices, in index order
        res.order = InOrder([job["index"] for job in jobs])
        index_of = {ids[id(job)]: job["index"] for job in jobs}
        for record in samples.records + rejected.records:
            if record["id"] in index_of and record["id"] not in again:
                if record.get("instruction"):
                    res.deduper.add(record["instruction"], index_of[record["id"]])
                res.order.settle(index_of[record["id"]])
    summary = RunSummary(already_done=len(jobs) - len(todo))
    gate = asyncio.Semaphore(samples_in_flight)
    config = {"recursion_limit": 30 + 10 * ctx.qfs_max_depth, "max_concurrency": ctx.llm_max_in_flight}

    async def one(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        async with gate:
            try:
                return job, await graph.ainvoke(job, config=config, context=ctx)
            except Exception as err:  # a bug or an unexpected library error fails this sample only
                return job, {"rejection": {"step": "graph", "reason": f"{type(err).__name__}: {err}"}}
            finally:
                if res.order is not None:
                    res.order.settle(job["index"])

    tasks = [asyncio.create_task(one(job)) for job in todo]
    bar = tqdm(total=len(jobs), initial=summary.already_done, unit="sample", disable=not progress, desc=mode)
    try:
        for next_done in asyncio.as_completed(tasks):
            job, out = await next_done
            if out.get("sample"):
                samples.write(out["sample"])
                summary.samples += 1
                summary.sample_tokens += out["sample"]["n_tokens"]
            else:
                reason = out.get("rejection") or {"step": "graph", "reason": "no sample and no rejection"}
                rejected.write({"id": ids[id(job)], "kind": kind, "index": job["index"],
                                "target_tokens": job.get("target_tokens"), "instruction": out.get("instruction"),
                                **reason}, supersede=True)  # a retried sample's newest reason is the one kept
                summary.rejected += 1
            bar.update(1)
            bar.set_postfix(done=summary.samples, rejected=summary.rejected, in_flight=res.llm.stats.in_flight,
                            tokens=summary.sample_tokens, refresh=False)
            finished = summary.samples + summary.rejected
            if finished >= min_finished_for_stop and summary.rejected / finished > max_error_rate:
                raise RunStopped(
                    f"stopped: {summary.rejected} of {finished} samples rejected (> synth.max_error_rate="
                    f"{max_error_rate}); reasons are in {rejected_path}"
                )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        res.order = None  # the shared resources outlive the run (Studio, a later run)
        bar.close()
        samples.close()
        rejected.close()
        stats = res.llm.stats
        summary.calls, summary.cached_calls, summary.failed_calls = stats.calls, stats.cached, stats.failures
        summary.requests, summary.retried_requests = stats.requests, stats.retried
        summary.prompt_tokens, summary.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        summary.peak_in_flight = stats.peak_in_flight
        summary.seconds = time.perf_counter() - start
        await res.llm.aclose()
    return summary
