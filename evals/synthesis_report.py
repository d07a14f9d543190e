"""A quality report of a synthesis run's samples file: one Markdown table (printed) and one PNG of histograms.

    python -m evals.synthesis_report data/synth/samples.jsonl [more shards ...] [--png report.png]
    python synthesize.py ... report=true        # the same, after the run, beside the samples

What it reads of each line (DESIGN.md's sample contract): `kind`, `n_tokens`, `target_tokens`, `doc_ids`, the
assistant turn, and from `provenance` the fields newer runs record — `documents` ({id, rank, position, tokens,
cut} per document slot), `task_type`, `answer_tokens`, `verified`. A record without one of these (an older file)
is left out of that row only; the row's `n` says how many values it has. A record superseded by a later line of
the same id (a retried sample) counts once, as its newest line; a torn last line is ignored.

An answer *cites* when its text names a document by the sample's header form, `Document 3` (`CITE`). Bracketed
numbers like "[3]" are not counted: answers quote code and lists full of them, and the header the model sees is
"Document i". Long-output samples (back-translation) are left out of the citing share: their answer is a corpus
document, not an answer about documents.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CITE = re.compile(r"\bDocument\s+\d+\b")
UNRECORDED = "(not recorded)"


def _summary(record: dict[str, Any], cite: re.Pattern[str]) -> dict[str, Any]:
    """The few fields of one sample the report needs (a samples file can be GBs; its texts are not kept)."""
    prov = record.get("provenance") or {}
    answer = next((m["content"] for m in reversed(record.get("messages", [])) if m.get("role") == "assistant"), "")
    return {
        "kind": record.get("kind", UNRECORDED), "n_tokens": record.get("n_tokens"),
        "target_tokens": record.get("target_tokens"), "doc_ids": list(record.get("doc_ids") or []),
        "documents": prov.get("documents"), "task_type": prov.get("task_type") or UNRECORDED,
        "answer_tokens": prov.get("answer_tokens"), "answer_words": len(answer.split()),
        "cites": bool(cite.search(answer)), "verified": prov.get("verified"),
    }


def read_summaries(paths: Sequence[Path], cite: re.Pattern[str] = CITE) -> list[dict[str, Any]]:
    """One summary per sample id across `paths` (its newest line wins). Raises FileNotFoundError naming a
    missing file."""
    by_id: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such samples file")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if line.endswith("\n") and line.strip():
                    record = json.loads(line)
                    by_id[record.get("id") or f"{path}:{n}"] = _summary(record, cite)
    return list(by_id.values())


def _num(x: float) -> str:
    """12 -> "12", 2.5 -> "2.5", 0.8333 -> "0.83"."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part}/{whole})" if whole else "- (0/0)"


def distributions(samples: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each distribution's values, by its row name (document rows pool every recorded document slot)."""
    slots = [d for s in samples for d in (s["documents"] or [])]
    per_doc = Counter(i for s in samples for i in set(s["doc_ids"]))
    return {
        "sample length (tokens)": [s["n_tokens"] for s in samples if s["n_tokens"] is not None],
        "target fill (n_tokens / target)": [s["n_tokens"] / s["target_tokens"] for s in samples
                                            if s["n_tokens"] is not None and s["target_tokens"]],
        "documents per sample": [len(s["doc_ids"]) for s in samples],
        "retrieval rank": [d["rank"] for d in slots if d.get("rank") is not None],
        "position (Document i)": [d["position"] for d in slots if d.get("position") is not None],
        "document tokens kept": [d["tokens"] for d in slots if d.get("tokens") is not None],
        "answer length (tokens)": [s["answer_tokens"] for s in samples if s["answer_tokens"] is not None],
        "answer length (words)": [s["answer_words"] for s in samples],
        "samples per distinct document": list(per_doc.values()),
    }


def _task_types(samples: list[dict[str, Any]]) -> dict[str, int]:
    """Samples per task type, by name, the unrecorded last."""
    types = Counter(s["task_type"] for s in samples)
    return {t: types[t] for t in sorted(types, key=lambda t: (t == UNRECORDED, t))}


def counts(samples: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(row, value) of the counts and shares."""
    n = len(samples)
    slots = sum(len(s["doc_ids"]) for s in samples)
    repeated = sum(len(s["doc_ids"]) - len(set(s["doc_ids"])) for s in samples)
    recorded = [d for s in samples for d in (s["documents"] or [])]
    cut = sum(bool(d.get("cut")) for d in recorded if d.get("cut") is not None)
    with_cut = sum(d.get("cut") is not None for d in recorded)
    citing = [s for s in samples if s["kind"] != "long_output"]
    judged = [s for s in samples if s["verified"] is not None]
    rows = [("samples", str(n))]
    rows += [(f"kind: {k}", _share(c, n)) for k, c in sorted(Counter(s["kind"] for s in samples).items())]
    types = _task_types(samples)
    rows += [(f"task type: {t}", _share(c, n)) for t, c in types.items()]
    rows += [
        ("samples recording their documents (rank, position)", _share(sum(s["documents"] is not None
                                                                          for s in samples), n)),
        ("document slots", str(slots)),
        ("distinct documents", str(len({i for s in samples for i in s["doc_ids"]}))),
        ("slots repeating a document of the same sample", _share(repeated, slots)),
        ("documents cut to fit", _share(cut, with_cut)),
        ("answers citing a document (\"Document i\")", _share(sum(s["cites"] for s in citing), len(citing))),
        ("answers verified (of those checked)", _share(sum(s["verified"] is True for s in judged), len(judged))),
    ]
    return rows


def markdown(samples: list[dict[str, Any]], source: str) -> str:
    """The distributions table (n, min, median, mean, max) and the counts-and-shares table."""
    lines = [f"Quality report of {len(samples)} sample(s) in {source}.", "",
             "| Distribution | n | min | median | mean | max |", "|---|---|---|---|---|---|"]
    for name, values in distributions(samples).items():
        cells = [_num(v) for v in (min(values), statistics.median(values), statistics.fmean(values), max(values))
                 ] if values else ["-"] * 4
        lines.append(f"| {name} | {len(values)} | " + " | ".join(cells) + " |")
    lines += ["", "| Count | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in counts(samples)]
    return "\n".join(lines) + "\n"


def plot(samples: list[dict[str, Any]], png_path: Path, title: str) -> None:
    """One figure: histograms of length, documents per sample, retrieval rank, position and answer length, and
    the task-type mix as bars; written whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    dist = distributions(samples)
    tokens = dist["answer length (tokens)"]
    panels = [("sample length (tokens)", False), ("documents per sample", True), ("retrieval rank", True),
              ("position (Document i)", True),
              ("answer length (tokens)" if tokens else "answer length (words)", False)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (name, discrete) in zip(axes.flat, panels):
        values = dist[name]
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("samples" if name in ("sample length (tokens)", "documents per sample") or "answer" in name
                      else "document slots")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if not values:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        bins = np.arange(min(values), max(values) + 2) - 0.5 if discrete else min(20, max(1, len(set(values))))
        ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        if discrete and max(values) - min(values) < 30:
            ax.set_xticks(range(int(min(values)), int(max(values)) + 1))
    types = _task_types(samples)
    ax = axes.flat[5]
    ax.bar(list(types), list(types.values()), color="tab:orange")
    ax.set_title("task type", fontsize=10)
    ax.set_ylabel("samples")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(png_path.stem + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png_path)


def png_beside(samples_path: str | Path) -> Path:
    """The report's PNG beside a samples file: samples.jsonl -> report.png, samples.shard0-of-2.jsonl ->
    report.shard0-of-2.png, other.jsonl -> other.report.png."""
    p = Path(samples_path)
    name = p.stem.replace("samples", "report", 1) if p.stem.startswith("samples") else f"{p.stem}.report"
    return p.with_name(name + ".png")


def report(samples_path: str | Path | Sequence[str | Path], png_path: str | Path, cite: re.Pattern[str] = CITE,
           ) -> str:
    """Summarize one samples file (or several shards together): write the histograms to `png_path`, print the
    table and return it. Raises FileNotFoundError naming a missing file."""
    paths = [Path(samples_path)] if isinstance(samples_path, (str, Path)) else [Path(p) for p in samples_path]
    samples = read_summaries(paths, cite)
    source = ", ".join(str(p) for p in paths)
    plot(samples, Path(png_path), f"{len(samples)} samples — " + ", ".join(p.name for p in paths))
    table = markdown(samples, source) + f"\nHistograms: {png_path}\n"
    print(table, end="")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """python -m evals.synthesis_report SAMPLES.jsonl [...] [--png OUT.png]: print the quality table of the samples
    (shards together) and write the histograms (default: beside the first file, samples.jsonl -> report.png)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("samples", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        report(args.samples, args.png or png_beside(args.samples[0]))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
