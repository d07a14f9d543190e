"""Ring attention: per-rank attention work of packed, padded rows under each layout (max / mean over ranks).

    python benchmarks/ring_balance.py [--issue-seq-len 1048576] [--fill 0.6] [--seq-len 131072] [--samples 300]

Work is counted by `kernels.ring_attn.attention_work`, exactly: token level = the visible (query, key)
pairs a rank computes (padding sees nothing and is seen by nothing, documents see only themselves); block
level = the 128 x 64 tiles the kernel visits (a tile counts when any pair in it is visible). Layouts:
- old zigzag: the whole row, padding included, in 2W chunks; rank r takes chunks r and 2W-1-r;
- prefix zigzag (k rounds): the same over the row's valid prefix only, in 2Wk chunks of whole kernel blocks
  dealt in snake order, the padding tail split evenly after them (`balanced_positions`);
- balanced (what layout="zigzag" now is): kernel-block chunks dealt by their work (`balanced_shards`).

(a) the issue's row: one sample filling `--fill` of a row of `--issue-seq-len` tokens, padding after it.
(b) realistic packing: sample lengths log-uniform in [2048, seq_len] (seeded), packed best-fit
    (`lightning_modules.data.best_fit`, as training packs) into rows of `--seq-len`, documents and padding
    as the packer makes them; each row is a batch of its own (B=1 at these lengths): worst and median row.
(c) the prefix zigzag with k rounds over the same rows, token level: worst row per k.
Target: max / mean <= 1.02.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.ring_attn import (  # noqa: E402
    attention_work, balanced_positions, balanced_shards, imbalance, shard_positions, token_work,
)
from lightning_modules.data import best_fit  # noqa: E402

WORLDS = (2, 4, 8)
LAYOUTS = ("old zigzag", "prefix zigzag", "balanced")


def shards(layout: str, docs: torch.Tensor, world: int, rounds: int = 1) -> list[torch.Tensor]:
    """Every rank's positions of one row under a layout."""
    seq_len, valid = docs.numel(), int((docs >= 0).sum())
    if layout == "old zigzag":
        return [shard_positions(seq_len, world, r, "zigzag") for r in range(world)]
    if layout == "prefix zigzag":
        return [balanced_positions(valid, seq_len, world, r, rounds=rounds) for r in range(world)]
    return balanced_shards(docs, world)


def packed_rows(seq_len: int, samples: int, seed: int) -> torch.Tensor:
    """Document ids `[rows, seq_len]` of best-fit packed samples of log-uniform lengths (-1: padding)."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(2048), np.log(seq_len), samples)).astype(int).tolist()
    plan = best_fit(lengths, seq_len)
    docs = torch.full((len(plan), seq_len), -1, dtype=torch.long)
    for r, row in enumerate(plan):
        at = 0
        for d, i in enumerate(row):
            docs[r, at:at + lengths[i]] = d
            at += lengths[i]
    return docs


def issue_case(seq_len: int, fill: float) -> None:
    """(a) one sample filling `fill` of the row."""
    docs = torch.full((seq_len,), -1, dtype=torch.long)
    docs[:int(fill * seq_len)] = 0
    print(f"(a) one sample filling {fill:.0%} of a {seq_len}-token row: max/mean of per-rank work, token | block")
    print(f"{'W':>3} " + " ".join(f"{name:>20}" for name in LAYOUTS))
    for world in WORLDS:
        cells = []
        for layout in LAYOUTS:
            tokens, tiles = attention_work(shards(layout, docs, world), docs)
            cells.append(f"{imbalance(tokens):>9.3f} | {imbalance(tiles):<8.3f}")
        print(f"{world:>3} " + " ".join(f"{c:>20}" for c in cells))


def packed_case(docs: torch.Tensor) -> None:
    """(b) every packed row under each layout: worst and median row, token and block level."""
    rows, seq_len = docs.shape
    real = (docs >= 0).sum(-1).double() / seq_len
    per_row = [int(row.max()) + 1 for row in docs]
    print(f"\n(b) {rows} best-fit packed rows of {seq_len} tokens: fill {real.mean():.1%} (least {real.min():.1%}), "
          f"{statistics.median(per_row):g} documents per row (median, most {max(per_row)})")
    print(f"{'W':>3} {'layout':>14} {'token worst':>12} {'median':>8} {'block worst':>12} {'median':>8} "
          f"{'rows > 1.02':>12}")
    for world in WORLDS:
        for layout in LAYOUTS:
            tok, blk = [], []
            for row in docs:
                tokens, tiles = attention_work(shards(layout, row, world), row)
                tok.append(imbalance(tokens))
                blk.append(imbalance(tiles))
            over = sum(t > 1.02 for t in tok)
            print(f"{world:>3} {layout:>14} {max(tok):>12.4f} {statistics.median(tok):>8.4f} {max(blk):>12.4f} "
                  f"{statistics.median(blk):>8.4f} {over:>8}/{rows}")


def rounds_sweep(docs: torch.Tensor, block: int = 128) -> None:
    """(c) the prefix zigzag with k rounds (2Wk chunks), token level, worst row (pairs from `token_work`)."""
    seq_len = docs.shape[1]
    work = [token_work(row) for row in docs]
    print(f"\n(c) prefix zigzag with k rounds over the rows of (b), token level, worst row (k up to chunks of {block})")
    for world in WORLDS:
        cells, k = [], 1
        while 2 * world * k * block <= seq_len:
            worst = max(imbalance([int(w[p].sum()) for p in shards("prefix zigzag", row, world, k)])
                        for row, w in zip(docs, work))
            cells.append(f"k={k}: {worst:.3f}")
            k *= 2
        print(f"  W={world}: " + "  ".join(cells))


def main() -> None:
    """Print the three tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issue-seq-len", type=int, default=1 << 20)
    parser.add_argument("--fill", type=float, default=0.6)
    parser.add_argument("--seq-len", type=int, default=1 << 17)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    issue_case(args.issue_seq_len, args.fill)
    docs = packed_rows(args.seq_len, args.samples, args.seed)
    packed_case(docs)
    rounds_sweep(docs)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
