"""Reports of a run: scores per task x length and their average (the layout of the paper's RULER table),
as Markdown and CSV, and a depth x length heatmap per needle task."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from evals.tasks import Cell


def length_label(n: int) -> str:
    """131072 -> "128k", 1048576 -> "1M", 1000 -> "1000"."""
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}k" if n % 1024 == 0 else str(n)


def task_length_scores(cells: dict[Cell, dict]) -> dict[str, dict[int, float]]:
    """Per task and length: the mean score over its samples (all depths of a needle grid together)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for (task, length, _), c in cells.items():
        acc = sums.setdefault((task, length), [0.0, 0])
        acc[0] += c["score"] * c["samples"]
        acc[1] += c["samples"]
    out: dict[str, dict[int, float]] = {}
    for (task, length), (total, n) in sums.items():
        out.setdefault(task, {})[length] = round(total / n, 2)
    return out


def length_means(scores: dict[str, dict[int, float]]) -> dict[int, float]:
    """Per length, the mean over tasks: the RULER score at that length."""
    lengths = sorted({n for per in scores.values() for n in per})
    return {n: round(sum(per[n] for per in scores.values() if n in per) /
                     sum(n in per for per in scores.values()), 2) for n in lengths}


def markdown(scores: dict[str, dict[int, float]], model: str, skipped: dict[str, str]) -> str:
    """The paper's table (one row: the model, its score per length, the average) and the task x length table."""
    lengths = sorted({n for per in scores.values() for n in per})
    means = length_means(scores)
    head = "| " + " | ".join(length_label(n) for n in lengths) + " |"
    rule = "|---" * (len(lengths) + 2) + "|"
    avg = round(sum(means.values()) / len(means), 2) if means else 0.0
    lines = [f"Average over {len(scores)} task(s).", "", "| Model " + head + " Avg |", rule,
             f"| {model} | " + " | ".join(f"{means[n]:.1f}" for n in lengths) + f" | {avg:.1f} |", "",
             "| Task " + head, "|---" * (len(lengths) + 1) + "|"]
    for task in scores:
        lines.append(f"| {task} | " + " | ".join(f"{scores[task][n]:.1f}" if n in scores[task] else "-"
                                                 for n in lengths) + " |")
    lines.append(f"| **Average ({len(scores)} tasks)** | " + " | ".join(f"**{means[n]:.1f}**" for n in lengths) + " |")
    if skipped:
        lines += ["", "Skipped:"] + [f"- {what}: {why}" for what, why in skipped.items()]
    return "\n".join(lines) + "\n"


def cells_csv(cells: dict[Cell, dict]) -> str:
    """One row per cell: task, length, depth, samples, score, nulls."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task", "length", "depth", "samples", "score", "nulls"])
    for (task, length, depth), c in cells.items():
        writer.writerow([task, length, "" if depth is None else depth, c["samples"], c["score"], c["nulls"]])
    return buf.getvalue()


def scores_csv(scores: dict[str, dict[int, float]]) -> str:
    """The task x length table as CSV, with the per-length average last."""
    lengths = sorted({n for per in scores.values() for n in per})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task", *lengths])
    for task, per in scores.items():
        writer.writerow([task, *(per.get(n, "") for n in lengths)])
    means = length_means(scores)
    writer.writerow(["average", *(means[n] for n in lengths)])
    return buf.getvalue()


def heatmap(cells: dict[Cell, dict], task: str, path: Path, model: str) -> None:
    """Depth (rows, 0% at the top) x length (columns) of one needle task, the score colour-mapped 0-100,
    each length's mean in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mine = {(n, d): c["score"] for (t, n, d), c in cells.items() if t == task and d is not None}
    lengths, depths = sorted({n for n, _ in mine}), sorted({d for _, d in mine})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (n, d), s in mine.items():
        grid[depths.index(d), lengths.index(n)] = s
    means = np.nanmean(grid, axis=0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.35 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    means_text = ", ".join(f"{length_label(n)}: {m:.1f}" for n, m in zip(lengths, means))
    ax.set_title(f"{task} — {model}\nmean per length: {means_text}", fontsize=9)
    save_figure(fig, im, "score", path)


def save_figure(fig, image, label: str, path: Path) -> None:
    """Add the colour bar, lay out, and write the PNG whole or not at all."""
    import matplotlib.pyplot as plt

    fig.colorbar(image, ax=fig.axes[0], label=label)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def runs_table(runs: dict[str, dict[str, float]], first: str = "Variant") -> str:
    """One row per run (its name and score per length, from `scores.json`'s `length_means`), a column per
    length: the layout of the paper's ablation table."""
    lengths = sorted({int(n) for means in runs.values() for n in means})
    lines = [f"| {first} | " + " | ".join(length_label(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{means[str(n)]:.1f}" if str(n) in means else "-" for n in lengths) + " |"
              for name, means in runs.items()]
    return "\n".join(lines) + "\n"


def collect(folder: Path) -> dict[str, dict[str, float]]:
    """`length_means` of every run folder directly under `folder` (those holding a scores.json), by name."""
    import json

    return {p.parent.name: json.loads(p.read_text())["length_means"] for p in sorted(folder.glob("*/scores.json"))}


def main() -> None:
    """python -m evals.report FOLDER [--first NAME]: print the table of the runs under FOLDER."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--first", default="Run")
    args = parser.parse_args()
    runs = collect(args.folder)
    if not runs:
        print(f"error: no run folder with scores.json under {args.folder}", file=sys.stderr)
        sys.exit(2)
    print(runs_table(runs, args.first), end="")


if __name__ == "__main__":
    main()
