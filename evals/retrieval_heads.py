"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality"): how often
each attention head, while the model copies a needle's answer, attends most strongly to the very token it copies.

Probes are needle samples from the one generator with their answer appended (teacher forcing): at every answer
token that also occurs in the needle (a copy step), a head scores a hit when the argmax of its attention row
(the query just before that token) lands on a needle position holding that token. A head's retrieval score is
its hits over the copy steps. Attention weights come from eager attention (`output_attentions`), so any
Llama-family checkpoint works at the lengths its dense [H, S, S] attention fits in memory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evals.haystack import Haystack
from evals.needles import NeedleFormat, needle_sample
from evals.prompting import PromptFormat
from evals.report import save_figure


@dataclass
class Probe:
    """Token ids of prompt + answer, the needle's token span [start, end) and where the answer starts."""

    ids: list[int]
    needle: tuple[int, int]
    answer_start: int


def make_probes(fmt: PromptFormat, hay: Haystack, nf: NeedleFormat, length: int, count: int, seed: int = 0,
                ) -> list[Probe]:
    """`count` needle samples of `length` tokens at evenly spread depths, each with its answer appended."""
    rng = random.Random(seed)
    probes = []
    for i in range(count):
        depth = (i + 0.5) / count
        s = needle_sample(rng, hay, fmt, nf, "retrieval_heads", length, depth, i)
        needle = nf.needle.format(key=s.meta["key"], value=s.answers[0])
        answer = nf.answer.format(value=s.answers[0]).rstrip(".")
        text = s.prompt + answer
        enc = fmt._fast.encode(text, add_special_tokens=True)  # what the server would see, plus the answer
        at = s.prompt.index(needle)
        starts = [a for a, _ in enc.offsets]
        in_needle = [j for j, (a, b) in enumerate(enc.offsets) if a >= at and b <= at + len(needle) and b > a]
        answer_start = next(j for j, a in enumerate(starts) if a >= len(s.prompt) and enc.offsets[j][1] > a)
        probes.append(Probe(enc.ids, (in_needle[0], in_needle[-1] + 1), answer_start))
    return probes


def copy_hits(attention: np.ndarray, probe: Probe) -> tuple[np.ndarray, int]:
    """Hits per head `[L, H]` and the number of copy steps of one probe, from its attention `[L, H, S, S]`."""
    ids = np.asarray(probe.ids)
    start, end = probe.needle
    hits = np.zeros(attention.shape[:2])
    steps = 0
    for t in range(probe.answer_start, len(ids)):
        sources = start + np.flatnonzero(ids[start:end] == ids[t])
        if not len(sources):
            continue  # not a copy step: the token is not in the needle
        steps += 1
        top = attention[:, :, t - 1, :].argmax(-1)  # [L, H]: where each head looks when predicting token t
        hits += np.isin(top, sources)
    return hits, steps


def retrieval_scores(model, probes: list[Probe]) -> np.ndarray:
    """Retrieval score `[layers, heads]` of a model (loaded with attn_implementation="eager") over the probes."""
    import torch

    total, steps = None, 0
    with torch.no_grad():
        for probe in probes:
            out = model(input_ids=torch.tensor([probe.ids]), output_attentions=True)
            attention = torch.stack([a[0] for a in out.attentions]).float().numpy()  # [L, H, S, S]
            hits, n = copy_hits(attention, probe)
            total = hits if total is None else total + hits
            steps += n
    return total / max(steps, 1)


def head_set(scores: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """(layer, head) of every head whose retrieval score is at least `threshold`."""
    return {(int(l), int(h)) for l, h in zip(*np.nonzero(scores >= threshold))}


def recall(found: set, reference: set) -> float | None:
    """The share of `reference`'s heads that `found` also holds (None when the reference has none)."""
    return len(found & reference) / len(reference) if reference else None


def heatmap(scores: np.ndarray, path: Path, title: str) -> None:
    """Layer (rows) x head (columns), the retrieval score colour-mapped 0-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.5 * scores.shape[1]), 1.6 + 0.45 * scores.shape[0]))
    im = ax.imshow(scores, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(scores.shape[1]))
    ax.set_yticks(range(scores.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    for (l, h), v in np.ndenumerate(scores):
        ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.5 else "k")
    ax.set_title(title, fontsize=9)
    save_figure(fig, im, "retrieval score", path)
