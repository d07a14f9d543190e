"""Which key blocks each query block visits (and the converse), as loop bounds for the Triton kernels.

A tile (query block i, key block j) is
- *skipped* when no query of i can see any key of j: every key after every query (causal, by global
  position), no document in common, or one side all padding (document id < 0) or past the end;
- *full* when every query of i sees every key of j: no padding or tail on either side, one document
  shared by both, and (causal) the last key at or before the first query — no mask is computed;
- *masked* otherwise (the diagonal, a document boundary, the tail): the element mask is applied.

The kernels loop over contiguous runs of full blocks and of masked blocks, so their inner loops have
plain bounds and no branch (Triton can software-pipeline them). Positions and document ids are
arbitrary integers (a zigzag shard holds two ascending runs, a ring's K/V block another rank's two),
so the runs are found from per-block summaries, not assumed: the schedule is exact at block level
for any input, and the element mask inside masked blocks keeps it exact at token level.

`schedule(...)` returns `ranges` `[B, n_rows, R, 2]` int32 (lo, hi) block runs — the full ones first —
and `counts` `[B, n_rows, 2]` int32 (full runs, masked runs) per row block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BIG = 2**62  # larger than any position or document id


@dataclass
class Blocks:
    """Per-block summaries of one side (queries or keys), each `[B, n_blocks]`."""

    pos_min: torch.Tensor
    pos_max: torch.Tensor
    doc_min: torch.Tensor
    doc_max: torch.Tensor
    any_valid: torch.Tensor
    all_valid: torch.Tensor


def summarize(pos: torch.Tensor, doc: torch.Tensor | None, batch: int, length: int, block: int) -> Blocks:
    """Summaries of `[B, S]` (or `[1, S]`) positions and document ids over blocks of `block` tokens; the
    tail past `length` and negative document ids (padding) are invalid."""
    n = -(-length // block)
    pad = n * block - length

    def blocked(x: torch.Tensor, fill: int) -> torch.Tensor:
        x = x.long().expand(batch, length)
        if pad:
            x = torch.cat([x, x.new_full((batch, pad), fill)], dim=1)
        return x.view(batch, n, block)

    p = blocked(pos, 0)
    valid = blocked(torch.ones(1, length, dtype=torch.long, device=pos.device), 0).bool()
    d = blocked(doc, -1) if doc is not None else torch.zeros_like(p)
    if doc is not None:
        valid &= d >= 0
    return Blocks(
        pos_min=torch.where(valid, p, _BIG).amin(-1), pos_max=torch.where(valid, p, -_BIG).amax(-1),
        doc_min=torch.where(valid, d, _BIG).amin(-1), doc_max=torch.where(valid, d, -_BIG).amax(-1),
        any_valid=valid.any(-1), all_valid=valid.all(-1),
    )


def _classify(q: Blocks, k: Blocks, causal: bool, keys_per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(full, masked) bool `[B, n_rows, n_cols]`; rows are query blocks, or key blocks when `keys_per_row`."""
    if keys_per_row:  # rows index key blocks, columns query blocks
        def qq(x):
            return x[:, None, :]

        def kk(x):
            return x[:, :, None]
    else:
        def qq(x):
            return x[:, :, None]

        def kk(x):
            return x[:, None, :]
    may = qq(q.any_valid) & kk(k.any_valid)
    may &= (kk(k.doc_min) <= qq(q.doc_max)) & (kk(k.doc_max) >= qq(q.doc_min))
    full = may & qq(q.all_valid) & kk(k.all_valid)
    full &= (qq(q.doc_min) == qq(q.doc_max)) & (kk(k.doc_min) == kk(k.doc_max)) & (qq(q.doc_min) == kk(k.doc_min))
    if causal:
        may &= kk(k.pos_min) <= qq(q.pos_max)
        full &= kk(k.pos_max) <= qq(q.pos_min)
    full &= may
    return full, may & ~full


def _runs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs of True along the last dim of `[B, R, N]`: (row index `[M, 2]`, lo `[M]`, hi `[M]`, in row order)
    and the count per row `[B, R]`."""
    prev = torch.nn.functional.pad(x[..., :-1], (1, 0))
    nxt = torch.nn.functional.pad(x[..., 1:], (0, 1))
    starts = (x & ~prev).nonzero()  # [M, 3] sorted by (b, row, col)
    ends = (x & ~nxt).nonzero()
    return starts, ends[:, 2] + 1, (x & ~prev).sum(-1)


def schedule(q: Blocks, k: Blocks, causal: bool, keys_per_row: bool = False, rows_per_pass: int = 1024,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block runs each row block visits: (`ranges` `[B, n_rows, R, 2]` int32, `counts` `[B, n_rows, 2]` int32).

    Rows are query blocks (forward, dQ) or, with `keys_per_row`, key blocks (dK/dV, columns are query
    blocks). Computed `rows_per_pass` row blocks at a time, so memory stays `rows_per_pass x n_cols`.
    """
    rows_side = k if keys_per_row else q
    batch, n_rows = rows_side.any_valid.shape
    pieces = []
    for start in range(0, n_rows, rows_per_pass):
        sl = slice(start, start + rows_per_pass)
        sub = Blocks(*(getattr(rows_side, f)[:, sl] for f in Blocks.__dataclass_fields__))
        full, masked = _classify(q if keys_per_row else sub, sub if keys_per_row else k, causal, keys_per_row)
        pieces.append((_runs(full), _runs(masked), start))
    n_full = torch.cat([p[0][2] for p in pieces], dim=1)
    n_masked = torch.cat([p[1][2] for p in pieces], dim=1)
    counts = torch.stack([n_full, n_masked], dim=-1).to(torch.int32)  # [B, n_rows, 2]
    width = max(1, int((n_full + n_masked).max()))  # one host sync per schedule
    ranges = torch.zeros(batch, n_rows, width, 2, dtype=torch.int32, device=rows_side.any_valid.device)
    for (full_runs, masked_runs, start) in pieces:
        for (idx, hi, per_row), base in ((full_runs, None), (masked_runs, "full")):
            if idx.numel() == 0:
                continue
            b, row, lo = idx[:, 0], idx[:, 1], idx[:, 2]
            # slot of each run within its row: its rank among the row's runs (+ the row's full runs)
            first = torch.cumsum(per_row.flatten(), 0) - per_row.flatten()
            slot = torch.arange(idx.shape[0], device=idx.device) - first[b * per_row.shape[1] + row]
            if base is not None:
                slot = slot + n_full[b, start + row]
            ranges[b, start + row, slot, 0] = lo.to(torch.int32)
            ranges[b, start + row, slot, 1] = hi.to(torch.int32)
    return ranges, counts


def visited_tiles(ranges: torch.Tensor, counts: torch.Tensor) -> tuple[int, int]:
    """(full, masked) tiles a schedule visits, summed over batch rows and row blocks."""
    lengths = (ranges[..., 1] - ranges[..., 0]).long()  # [B, n_rows, R]
    slots = torch.arange(ranges.shape[2], device=ranges.device)
    is_full = slots < counts[..., :1]
    is_masked = (slots >= counts[..., :1]) & (slots < counts[..., :1] + counts[..., 1:])
    return int((lengths * is_full).sum()), int((lengths * is_masked).sum())
