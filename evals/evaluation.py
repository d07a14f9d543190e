"""An evaluation from plain settings: the target (an endpoint, or a checkpoint served for the run), the
task's plan, the run folder (resumable, refused if it holds a run with other settings), and the reports."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agents.errors import InputError
from evals import report
from evals.client import EvalClient
from evals.prompting import PromptFormat
from evals.runner import run_plan, summarize, write_atomic
from evals.tasks import Plan, limit_lengths, niah_plan, pregenerated_plan, ruler_plan

KINDS = ("niah", "ruler", "pregenerated", "retrieval_heads")


def target_format(target: dict) -> PromptFormat:
    """The target's tokenizer and chat template: `target.tokenizer`, or the checkpoint folder itself."""
    folder = target.get("tokenizer") or target.get("path")
    if not folder:
        raise InputError("set target.tokenizer to a local folder with the served model's tokenizer (prompts are "
                         "rendered and counted with it)")
    return PromptFormat.from_folder(folder, target.get("chat_template"), target.get("use_chat_template", True))


def max_positions(target: dict) -> int | None:
    """The target's context: `target.max_model_len`, else `max_position_embeddings` of its folder's config."""
    if target.get("max_model_len"):
        return int(target["max_model_len"])
    for key in ("path", "tokenizer"):
        config = Path(target.get(key) or "/nonexistent").expanduser() / "config.json"
        if config.is_file():
            return json.loads(config.read_text()).get("max_position_embeddings")
    return None


def build_plan(task: dict, fmt: PromptFormat | None, corpus, seed: int) -> Plan:
    """The task's cells from its settings (`kind`: niah, ruler or pregenerated)."""
    kind = task.get("kind")
    if kind == "niah":
        return niah_plan(fmt, haystack_text(task, corpus), task["needle"], task["name"], list(task["lengths"]),
                         task["num_depths"], task["samples_per_cell"], seed, task.get("tolerance", 0.01))
    if kind == "ruler":
        essay = haystack_text({"haystack": "corpus", "mask_digits": False}, corpus)
        return ruler_plan(fmt, list(task["tasks"]), list(task["lengths"]), task["num_samples"], seed, essay,
                          dict(task.get("qa_files") or {}))
    if kind == "pregenerated":
        if not task.get("path"):
            raise InputError("task=pregenerated needs task.path: a RULER-format .jsonl file or a folder of them")
        return pregenerated_plan(task["path"])
    raise InputError(f"task.kind must be one of {', '.join(KINDS)}, not {kind!r}")


def haystack_text(task: dict, corpus) -> str:
    """Filler text: the passkey task's digit-free documentation split, or the configured corpus."""
    from evals.haystack import corpus_haystack, passkey_haystack

    if task.get("haystack") == "passkey":
        return passkey_haystack(task.get("split", "eval"))
    if corpus is None:
        raise InputError("this task needs a corpus for its haystack: set corpus=python_docs or corpus=files")
    return corpus_haystack(corpus, mask_digits=task.get("mask_digits", False))


@contextlib.contextmanager
def open_client(target: dict) -> Iterator[EvalClient]:
    """A client for the target: an endpoint as configured, or a checkpoint under `transformers serve`."""
    from evals.serve import serve_checkpoint

    common = {k: target[k] for k in ("api", "api_key_env", "max_in_flight", "timeout", "max_retries") if k in target}
    if target["kind"] == "endpoint":
        yield EvalClient(target["base_url"], target["model"], **common)
    elif target["kind"] == "checkpoint":
        with serve_checkpoint(target["path"], target.get("device", "auto"), target.get("startup_timeout", 600)) as url:
            yield EvalClient(url, str(Path(target["path"]).expanduser()), **common)
    else:
        raise InputError(f"target.kind must be endpoint or checkpoint, not {target['kind']!r}")


def fingerprint(target: dict, task: dict, corpus: dict | None, seed: int) -> str:
    """What decides a run's samples and replies; a folder holding another fingerprint is not resumed."""
    keys = ("kind", "base_url", "model", "path", "tokenizer", "api", "chat_template", "use_chat_template")
    blob = json.dumps([{k: target.get(k) for k in keys}, task, corpus, seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_folder(out_dir: Path, stamp: str, config_yaml: str) -> None:
    """Create the run folder, or check that the one there holds this run."""
    marker = out_dir / "run.json"
    if marker.exists():
        if json.loads(marker.read_text()).get("fingerprint") != stamp:
            raise InputError(f"{out_dir} holds a run with other settings: set out_dir to a new folder, or remove "
                             f"it to start over")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "config.yaml", config_yaml)
    write_atomic(marker, json.dumps({"fingerprint": stamp}))


def evaluate(target: dict, task: dict, corpus, out_dir: str, seed: int, config_yaml: str, progress: bool = True,
             corpus_config: dict | None = None) -> dict:
    """Run the task against the target into `out_dir`; returns what `scores.json` holds. `corpus_config`
    (the settings `corpus` was made from) is part of the run's fingerprint."""
    from evals.serve import check_checkpoint

    if target["kind"] == "checkpoint":
        check_checkpoint(target["path"])
    if task.get("kind") == "pregenerated" and target.get("api") == "chat":
        raise InputError("task=pregenerated sends prompts already rendered in a chat template, with their answer "
                         "prefix: use target.api=completions")
    fmt = None if task.get("kind") == "pregenerated" else target_format(target)  # pregenerated: rendered already
    plan = limit_lengths(build_plan(task, fmt, corpus, seed), max_positions(target), target.get("allow_longer", False))
    if not plan.cells:
        raise InputError(f"nothing to evaluate: {'; '.join(f'{k}: {v}' for k, v in plan.skipped.items())}")
    for task_name in dict.fromkeys(c[0] for c in plan.cells):  # the shortest cell of each task must be makeable
        plan.make(min((c for c in plan.cells if c[0] == task_name), key=lambda c: c[1]))
    out = Path(out_dir)
    with open_client(target) as client:
        async def go() -> list[dict]:
            try:
                await client.preflight()
                prepare_folder(out, fingerprint(target, task, corpus_config, seed), config_yaml)
                return await run_plan(plan, client, out / "predictions.jsonl", progress)
            finally:
                await client.aclose()

        rows = asyncio.run(go())
    if target["kind"] == "endpoint":
        label = str(target["model"])
    else:
        label = "/".join(Path(target["path"]).expanduser().parts[-2:])  # e.g. tiny_1k/hf
    return write_reports(out, rows, plan, label, client.api, task)


def write_reports(out: Path, rows: list[dict], plan: Plan, model: str, api: str, task: dict) -> dict:
    """scores.json, scores.md, scores.csv, cells.csv and one heatmap per needle task."""
    cells = summarize(rows)
    scores = report.task_length_scores(cells)
    means = report.length_means(scores)
    result = {"model": model, "api": api, "task": task.get("name"), "tasks_counted": len(scores),
              "average": round(sum(means.values()) / len(means), 2) if means else None,
              "length_means": {str(n): m for n, m in means.items()},
              "scores": {t: {str(n): s for n, s in per.items()} for t, per in scores.items()},
              "skipped": plan.skipped, "samples": len(rows),
              "cells": [{"task": t, "length": n, "depth": d, **c} for (t, n, d), c in cells.items()]}
    note = f"api: {api}" + ("" if api == "completions" else " (no answer prefix: chat API)")
    table = report.markdown(scores, model, plan.skipped)
    write_atomic(out / "scores.md", f"{model} — {task.get('name')}, {note}\n\n{table}")
    write_atomic(out / "scores.csv", report.scores_csv(scores))
    write_atomic(out / "cells.csv", report.cells_csv(cells))
    for name in sorted({t for t, _, d in cells if d is not None}):
        report.heatmap(cells, name, out / f"heatmap_{name}.png", model)
    write_atomic(out / "scores.json", json.dumps(result, indent=2))
    return result


def export_training(path: str, tokenizer, task: dict, seq_len: int, samples: int, min_fraction: float,
                    seed: int) -> Path:
    """The needle task's samples as training `messages` JSONL, from the haystack's training split."""
    from evals.haystack import Haystack, passkey_haystack
    from evals.needles import NeedleFormat, write_training_jsonl

    if task.get("kind") != "niah" or task.get("haystack") != "passkey":
        raise InputError(f"export_training writes the passkey task's data: use task=passkey (not {task.get('name')})")
    fmt = PromptFormat(tokenizer)
    hay = Haystack(passkey_haystack("train"), fmt)
    return write_training_jsonl(path, hay, fmt, NeedleFormat(**task["needle"]), samples, seq_len, min_fraction, seed)


def register_resolvers() -> None:
    """`${slug:...}`: a value made safe as one folder name (for run folders named after the target)."""
    import re

    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", lambda v: re.sub(r"[^A-Za-z0-9._-]+", "_", str(v)).strip("_"))


def check_group_choices(overrides: list[str], conf_dir: str) -> None:
    """Exit 2 naming the known options when a `task=` or `target=` override names no config (Hydra would
    fail with a traceback-like message before the entry point runs)."""
    import sys

    for arg in overrides:
        group, _, choice = arg.partition("=")
        if group in ("task", "target") and choice:
            known = sorted(p.stem for p in Path(conf_dir, group).glob("*.yaml"))
            if choice not in known:
                print(f"error: unknown {group} {choice!r}: choose one of {', '.join(known)} (conf/{group}/)",
                      file=sys.stderr)
                sys.exit(2)


def sweep_jobs(path: str, stage: str) -> dict[str, Path]:
    """A training sweep's jobs that exported `stage`: job name (its overrides, less those all jobs share) -> hf/."""
    root = Path(path).expanduser()
    found = sorted(p for p in root.iterdir() if (p / stage / "hf" / "config.json").is_file()) if root.is_dir() else []
    if not found:
        raise InputError(f"no job folder in {root} holds {stage}/hf: set target.path to a sweep folder (python "
                         f"train.py -m ... sweep_name=NAME writes <out_dir>/NAME/<job>/) and target.stage")
    parts = [p.name.split(",") for p in found]
    shared = set.intersection(*map(set, parts)) if len(parts) > 1 else set()
    return {",".join(x for x in names if x not in shared) or job.name: job / stage / "hf"
            for job, names in zip(found, parts)}


def evaluate_sweep(target: dict, task: dict, corpus, out_dir: str, seed: int, config_yaml: str, progress: bool = True,
                   corpus_config: dict | None = None) -> dict:
    """Evaluate every job of a training sweep as a checkpoint, each into `out_dir/<job>/`, and collect the
    per-length scores into `sweep.md` / `sweep.csv` / `sweep.json` in `out_dir`."""
    jobs = sweep_jobs(target["path"], target["stage"])
    out = Path(out_dir)
    results = {}
    for name, hf in jobs.items():
        job_target = {**target, "kind": "checkpoint", "path": str(hf)}
        job_dir = out / Path(hf).parents[1].name
        results[name] = evaluate(job_target, task, corpus, str(job_dir), seed, config_yaml, progress, corpus_config)
    lengths = sorted({int(n) for r in results.values() for n in r["length_means"]})
    table = report.runs_table({name: r["length_means"] for name, r in results.items()})
    summary = {"sweep": str(target["path"]), "stage": target["stage"], "task": task.get("name"),
               "scores": {name: r["length_means"] for name, r in results.items()}}
    write_atomic(out / "sweep.md", f"{task.get('name')} score per length, {target['stage']} of each job of "
                                   f"{target['path']}\n\n" + table)
    write_atomic(out / "sweep.csv", "variant," + ",".join(map(str, lengths)) + "\n" + "".join(
        f"{name}," + ",".join(str(r["length_means"].get(str(n), "")) for n in lengths) + "\n"
        for name, r in results.items()))
    write_atomic(out / "sweep.json", json.dumps(summary, indent=2))
    return summary


def evaluate_heads(target: dict, task: dict, out_dir: str, seed: int, config_yaml: str) -> dict:
    """Retrieval scores of every head of a checkpoint (loaded here with eager attention) on needle-copy probes:
    `heads.json`, `heads.md`, `heatmap_heads.png`; with `task.reference` (another checkpoint folder), the
    recall of this checkpoint's head set against the reference's."""
    from transformers import AutoModelForCausalLM

    from evals import retrieval_heads as rh
    from evals.haystack import Haystack
    from evals.needles import NeedleFormat
    from evals.serve import check_checkpoint

    if target["kind"] != "checkpoint":
        raise InputError("task=retrieval_heads reads attention weights: use target=checkpoint target.path=...")
    folders = [check_checkpoint(target["path"])] + ([check_checkpoint(task["reference"])] if task.get("reference")
                                                    else [])
    fmt = target_format(target)
    probes = rh.make_probes(fmt, Haystack(haystack_text(task, None), fmt), NeedleFormat(**task["needle"]),
                            task["length"], task["probes"], seed)
    scores = []
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
        scores.append(rh.retrieval_scores(model, probes))
    heads = [rh.head_set(s, task["threshold"]) for s in scores]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", config_yaml)
    label = "/".join(folders[0].parts[-2:])
    result = {"model": label, "length": task["length"], "probes": len(probes), "threshold": task["threshold"],
              "scores": np.round(scores[0], 4).tolist(), "heads": sorted(heads[0]),
              "reference": str(folders[1]) if len(folders) > 1 else None,
              "reference_heads": sorted(heads[1]) if len(folders) > 1 else None,
              "reference_scores": np.round(scores[1], 4).tolist() if len(folders) > 1 else None,
              "recall": rh.recall(heads[0], heads[1]) if len(folders) > 1 else None}
    rh.heatmap(scores[0], out / "heatmap_heads.png", f"retrieval score per head\n{label}, {task['length']} tokens, "
                                                     f"{len(probes)} probes")
    lines = [f"{label}: {len(heads[0])} head(s) with retrieval score >= {task['threshold']} at {task['length']} "
             f"tokens ({len(probes)} probes): {', '.join(f'L{l}H{h}' for l, h in sorted(heads[0])) or 'none'}"]
    if result["reference"]:
        shown = "n/a (the reference has none)" if result["recall"] is None else f"{result['recall']:.2f}"
        lines.append(f"recall against {result['reference']} ({len(heads[1])} heads): {shown}")
    write_atomic(out / "heads.md", "\n".join(lines) + "\n")
    write_atomic(out / "heads.json", json.dumps(result, indent=2))
    return result


def evaluate_heads_sweep(target: dict, task: dict, out_dir: str, seed: int, config_yaml: str) -> dict:
    """Retrieval heads of every job of a training sweep, each job's head set recalled against the reference job's
    (`task.reference`: a job name as `sweep.md` shows it, or a checkpoint folder) and its mean score on the
    reference's heads, ranked by the two, in one table beside the jobs' NIAH scores when `task.niah_scores`
    names a `sweep.json` of the same sweep."""
    jobs = sweep_jobs(target["path"], target["stage"])
    reference = task.get("reference")
    if reference in jobs:
        reference = str(jobs[reference])
    out = Path(out_dir)
    rows = {}
    for name, hf in jobs.items():
        job_target = {**target, "kind": "checkpoint", "path": str(hf)}
        rows[name] = evaluate_heads(job_target, {**task, "reference": reference}, str(out / hf.parents[1].name),
                                    seed, config_yaml)
    niah = json.loads(Path(task["niah_scores"]).read_text())["scores"] if task.get("niah_scores") else {}
    lengths = sorted({n for means in niah.values() for n in means}, key=int)
    head = ["Variant", "retrieval heads", f"recall vs {Path(reference).parents[1].name if reference else '-'}",
            "score on those heads", *[f"NIAH {report.length_label(int(n))}" for n in lengths]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    def rank(r: dict) -> tuple[float, float]:  # recall first, then how strongly the reference heads retrieve
        return -(r["recall"] or 0), -sum(r["scores"][l][h] for l, h in r["reference_heads"] or [])

    for name, r in sorted(rows.items(), key=lambda kv: rank(kv[1])):
        heads = ", ".join(f"L{l}H{h}" for l, h in r["heads"]) or "none"
        shown = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        on_reference = [r["scores"][l][h] for l, h in r["reference_heads"] or []]
        score = f"{sum(on_reference) / len(on_reference):.2f}" if on_reference else "-"
        lines.append(f"| {name} | {heads} | {shown} | {score} | " + " | ".join(
            f"{niah.get(name, {}).get(n, float('nan')):.1f}" for n in lengths) + " |")
    table = "\n".join(lines) + "\n"
    write_atomic(out / "heads_sweep.md", f"retrieval heads (score >= {task['threshold']}, {task['length']} tokens) of "
                                         f"{target['stage']} in each job of {target['path']}\n\n{table}")
    summary = {name: {"heads": r["heads"], "recall": r["recall"]} for name, r in rows.items()}
    write_atomic(out / "heads_sweep.json", json.dumps(summary, indent=2))
    return summary
