"""One evaluation run in one folder: requests through the client, `predictions.jsonl` appended as replies
arrive (so an interrupted run resumes where it stopped and sends nothing twice), cells generated lazily in
a worker thread while earlier requests are in flight, and a progress bar of cells done."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

from agents.errors import InputError
from evals.client import EvalClient
from evals.samples import EvalSample
from evals.scoring import score
from evals.tasks import Cell, Plan, sample_id


def load_predictions(path: Path) -> dict[str, dict]:
    """Rows already scored, by sample id; a last line cut by a kill is dropped from the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    rows = (json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip())
    return {row["id"]: row for row in rows}


def prediction_row(sample: EvalSample, api: str, prediction: str) -> dict:
    """What `predictions.jsonl` keeps of one scored sample."""
    return {"id": sample_id(sample.task, sample.length, sample.depth, sample.index), "input_hash": sample.key(api),
            "task": sample.task, "length": sample.length, "depth": sample.depth, "index": sample.index,
            "n_tokens": sample.n_tokens, "prediction": prediction, "answers": sample.answers, "metric": sample.metric,
            "score": score(prediction, sample.answers, sample.metric)}


async def run_plan(plan: Plan, client: EvalClient, predictions: Path, progress: bool = True) -> list[dict]:
    """Score every sample of the plan not yet in `predictions`; returns all rows in cell order."""
    from tqdm import tqdm

    done = load_predictions(predictions)

    def ids(cell: Cell) -> list[str]:
        return [sample_id(*cell, i) for i in range(plan.per_cell[cell])]

    left = {cell: sum(i not in done for i in ids(cell)) for cell in plan.cells}
    bar = tqdm(total=len(plan.cells), initial=sum(n == 0 for n in left.values()), unit="cell", disable=not progress,
               desc="cells")
    workers = max(1, client.max_in_flight)
    queue: asyncio.Queue[EvalSample | None] = asyncio.Queue(maxsize=2 * workers)

    async def produce() -> None:
        for cell in plan.cells:
            if left[cell]:
                for sample in await asyncio.to_thread(plan.make, cell):
                    row = done.get(sample_id(*cell, sample.index))
                    if row is None:
                        await queue.put(sample)
                    elif row["input_hash"] != sample.key(client.api):
                        raise InputError(f"{predictions} holds a different prompt for {row['id']} than this run "
                                         f"makes: its settings changed; use a new out_dir or remove that folder")
        for _ in range(workers):
            await queue.put(None)

    with open(predictions, "a", encoding="utf-8") as out:
        async def work() -> None:
            while (sample := await queue.get()) is not None:
                row = prediction_row(sample, client.api, await client.generate(sample))
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                done[row["id"]] = row
                cell = (sample.task, sample.length, sample.depth)
                left[cell] -= 1
                if not left[cell]:
                    bar.update(1)

        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(work()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
    return [done[i] for cell in plan.cells for i in ids(cell) if i in done]


def summarize(rows: list[dict]) -> dict[Cell, dict]:
    """Per cell: samples, score (mean x 100, 2 places as RULER rounds) and empty predictions ("nulls")."""
    sums: Counter = Counter()
    counts: Counter = Counter()
    nulls: Counter = Counter()
    for r in rows:
        cell = (r["task"], r["length"], r["depth"])
        sums[cell] += r["score"]
        counts[cell] += 1
        nulls[cell] += not r["prediction"].strip()
    return {c: {"samples": counts[c], "score": round(100 * sums[c] / counts[c], 2), "nulls": nulls[c]} for c in counts}


def write_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
