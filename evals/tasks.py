"""The cells of an evaluation and how each cell's samples are made: a NIAH grid (lengths x depths) of one
needle format, RULER's tasks x lengths, or RULER-format JSONL made elsewhere (scored as it is)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.errors import InputError
from evals.haystack import Haystack
from evals.needles import NeedleFormat, needle_sample
from evals.prompting import PromptFormat
from evals.samples import EvalSample

Cell = tuple[str, int, float | None]  # (task, length, depth)


def stable_seed(*parts: object) -> int:
    """A seed from any values, the same in every process (unlike `hash`)."""
    return int(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12], 16)


@dataclass
class Plan:
    """What a run evaluates: its cells, how many samples each holds, and how to make a cell's samples."""

    cells: list[Cell]
    per_cell: dict[Cell, int]
    make: Callable[[Cell], list[EvalSample]]
    skipped: dict[str, str]  # what was left out -> why


def sample_id(task: str, length: int, depth: float | None, index: int) -> str:
    """The identity of a sample within a run (its cell and index)."""
    return f"{task}|{length}|{'' if depth is None else f'{depth:.4f}'}|{index}"


def depth_grid(num_depths: int) -> list[float]:
    """`num_depths` evenly spaced needle depths from 0 to 1."""
    return [round(float(d), 4) for d in np.linspace(0.0, 1.0, num_depths)] if num_depths > 1 else [0.5]


def niah_plan(fmt: PromptFormat, haystack: str, needle: dict, name: str, lengths: list[int], num_depths: int,
              samples_per_cell: int, seed: int, tolerance: float = 0.01) -> Plan:
    """A needle grid: every length x depth cell holds `samples_per_cell` seeded samples."""
    nf = NeedleFormat(**needle)
    hay: list[Haystack] = []  # tokenized once, on first use

    def make(cell: Cell) -> list[EvalSample]:
        if not hay:
            hay.append(Haystack(haystack, fmt))
        task, length, depth = cell
        rng = random.Random(stable_seed(seed, task, length, depth))
        return [needle_sample(rng, hay[0], fmt, nf, task, length, depth, i, tolerance) for i in range(samples_per_cell)]

    cells = [(name, length, depth) for length in lengths for depth in depth_grid(num_depths)]
    return Plan(cells, {c: samples_per_cell for c in cells}, make, {})


def ruler_plan(fmt: PromptFormat, tasks: list[str], lengths: list[int], num_samples: int, seed: int, essay: str,
               qa_files: dict[str, str | None]) -> Plan:
    """RULER's tasks x lengths, `num_samples` each; QA tasks without a file are skipped and said so."""
    from evals import ruler

    unknown = [t for t in tasks if t not in ruler.TASKS]
    if unknown:
        raise InputError(f"unknown RULER task(s) {', '.join(unknown)} in task.tasks; known: {', '.join(ruler.TASKS)}")
    skipped: dict[str, str] = {}
    kept = []
    for t in tasks:
        if t.startswith("qa_"):
            path = qa_files.get(t)
            if not path:
                skipped[t] = f"no QA file: set task.qa_files.{t} to a local SQuAD/HotpotQA-format file"
                continue
            if not Path(path).expanduser().is_file():
                raise InputError(f"QA file {path} (task.qa_files.{t}) does not exist: point it at a local SQuAD "
                                 f"(qa_1) or HotpotQA (qa_2) json file, or set it to null to skip {t}")
        kept.append(t)

    def make(cell: Cell) -> list[EvalSample]:
        task, length, _ = cell
        return ruler.generate(task, fmt, length, num_samples, seed=seed, essay=essay, qa_path=qa_files.get(task))

    cells = [(t, length, None) for t in kept for length in lengths]
    return Plan(cells, {c: num_samples for c in cells}, make, skipped)


_SIZE = re.compile(r"^(?P<n>\d+)(?P<unit>[km]?)$")


def _size(text: str) -> int | None:
    """"128k" -> 131072, "1m" -> 1048576, "4096" -> 4096; None for anything else."""
    m = _SIZE.match(text.lower())
    return int(m["n"]) * {"": 1, "k": 1024, "m": 1024 * 1024}[m["unit"]] if m else None


def _task_and_length(path: Path) -> tuple[str, int | None]:
    """A pregenerated file's task and length from its path: `niah_single_1_128k.jsonl`,
    `niah_single_1_128k/validation.jsonl` (the authors' configs), or RULER's own layout
    `<max_seq_length>/data/<task>/validation.jsonl`; a file named after no RULER task is its own task."""
    from evals.ruler import TASKS

    for name in (path.stem, path.parent.name):
        for task in sorted(TASKS, key=len, reverse=True):
            if name == task and len(path.parts) >= 4 and path.parts[-3] == "data":
                return task, _size(path.parts[-4])
            if name.startswith(task + "_") and (n := _size(name[len(task) + 1:])):
                return task, n
            if name == task:
                return task, None
    return path.stem, None


def pregenerated_plan(path: str) -> Plan:
    """RULER-format JSONL (`input`, `answers` or `outputs`; optional `answer_prefix`, `length`, `index`) from a
    file or a folder of them, scored without regenerating: the prompt sent is `input` + `answer_prefix`. A file
    is one cell: its task and length come from its path (see `_task_and_length`), else from its rows."""
    from evals.templates import TOKENS_TO_GENERATE

    root = Path(path).expanduser()
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    if not root.exists() or not files:
        raise InputError(f"no RULER-format JSONL at {root}: set task.path to a .jsonl file or a folder of them")
    by_cell: dict[Cell, list[EvalSample]] = {}
    for file in files:
        task, length = _task_and_length(file)
        family = next((f for f in TOKENS_TO_GENERATE if task.startswith(f)), "niah")
        rows = []
        with file.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    answers = row.get("answers", row.get("outputs"))
                    answers = [answers] if isinstance(answers, str) else list(answers)
                    if not isinstance(row["input"], str) or not answers:
                        raise ValueError
                except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError):
                    raise InputError(f"{file}:{n} is not a RULER-format record (needs a string 'input' and a "
                                     f"non-empty 'answers' or 'outputs')") from None
                rows.append((row, answers))
        if not rows:
            raise InputError(f"{file} holds no record: remove it or point task.path elsewhere")
        length = length or max(int(row.get("length") or 0) for row, _ in rows)
        cell = (task, length, None)
        if cell in by_cell:
            raise InputError(f"{file} is a second file for {task} at {length} tokens: keep one per task and length")
        metric = "part" if family == "qa" else "all"
        by_cell[cell] = [
            EvalSample(task=task, length=length, index=i, user=row["input"], answer_prefix=row.get("answer_prefix", ""),
                       answers=answers, max_tokens=TOKENS_TO_GENERATE[family], metric=metric,
                       prompt=row["input"] + row.get("answer_prefix", ""), n_tokens=int(row.get("length") or 0),
                       meta={"file": str(file), "index": row.get("index")})
            for i, (row, answers) in enumerate(rows)]
    cells = sorted(by_cell, key=lambda c: (c[0], c[1]))
    return Plan(cells, {c: len(v) for c, v in by_cell.items()}, lambda c: by_cell[c], {})


def limit_lengths(plan: Plan, max_length: int | None, allow_longer: bool) -> Plan:
    """Cells longer than the target's context (`max_position_embeddings`) are skipped and listed, unless
    `allow_longer` (to measure how a model fails beyond its trained length)."""
    if max_length is None or allow_longer:
        return plan
    over = sorted({c[1] for c in plan.cells if c[1] > max_length})
    if not over:
        return plan
    cells = [c for c in plan.cells if c[1] <= max_length]
    skipped = {**plan.skipped, **{f"length {n}": f"above the target's {max_length} positions (set "
                                                    f"target.allow_longer=true to run it)" for n in over}}
    return Plan(cells, {c: plan.per_cell[c] for c in cells}, plan.make, skipped)
