"""The block schedule against the reference visibility mask: every tile with a visible pair is visited, a
tile run without a mask is wholly visible, padding's tiles are never visited."""

import pytest
import torch

from kernels.block_schedule import schedule, summarize, visited_tiles
from kernels.reference import visibility
from kernels.ring_attn import shard_positions


def _tiles(ranges, counts):
    """{(b, row, col): "full" | "masked"} from a schedule."""
    out = {}
    for b in range(ranges.shape[0]):
        for row in range(ranges.shape[1]):
            n_full, n_masked = counts[b, row].tolist()
            for slot in range(n_full + n_masked):
                lo, hi = ranges[b, row, slot].tolist()
                for col in range(lo, hi):
                    assert (b, row, col) not in out, "a tile visited twice"
                    out[(b, row, col)] = "full" if slot < n_full else "masked"
    return out


def _rows(seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two packed rows: uneven documents, the second with padding (-1) at its end."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for pad in (0, seq_len // 3):
        lengths = torch.randint(3, seq_len // 2, (seq_len,), generator=g).tolist()
        row = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[: seq_len - pad]
        docs.append(torch.cat([row, torch.full((pad,), -1)]))
    return torch.arange(seq_len).expand(2, -1), torch.stack(docs)


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 0), (2, 1), (4, 3)])
@pytest.mark.parametrize("keys_per_row", [False, True])
@pytest.mark.parametrize("blocks", [(8, 8), (16, 4), (4, 16)])
def test_schedule_is_exact_at_block_level_for_zigzag_shards_with_documents_and_padding(world, rank, keys_per_row,
                                                                                     blocks):
    seq_len = 128  # zigzag chunks (128 / 2W tokens) are whole blocks, as check_seq_len makes them in training
    pos, docs = _rows(seq_len, seed=world * 10 + rank)
    q_idx = shard_positions(seq_len, world, rank)
    k_idx = shard_positions(seq_len, world, (rank + 1) % world)  # a K/V block from another rank, as in a ring
    qp, qd, kp, kd = pos[:, q_idx], docs[:, q_idx], pos[:, k_idx], docs[:, k_idx]
    bq, bk = (blocks[1], blocks[0]) if keys_per_row else blocks
    sq, sk = qp.shape[1], kp.shape[1]
    ranges, counts = schedule(summarize(qp, qd, 2, sq, bq), summarize(kp, kd, 2, sk, bk), True, keys_per_row)
    tiles = _tiles(ranges, counts)
    vis = visibility(2, sq, sk, True, qp, kp, qd, kd)[:, 0]  # [B, Sq, Sk]
    for b in range(2):
        for i in range(-(-sq // bq)):
            for j in range(-(-sk // bk)):
                tile = vis[b, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                key = (b, j, i) if keys_per_row else (b, i, j)
                kind = tiles.get(key)
                if tile.any():
                    assert kind is not None, f"visible tile {key} skipped"
                if kind == "full":
                    assert tile.all() and tile.shape == (bq, bk), f"tile {key} run without a mask is not all visible"
                if kind is not None:  # every visited tile has something to compute (blocks within one chunk)
                    assert tile.any(), f"invisible tile {key} visited"


def test_padding_blocks_are_never_visited_and_a_causal_row_runs_most_tiles_unmasked():
    pos = torch.arange(256)[None]
    docs = torch.zeros(1, 256, dtype=torch.long)
    docs[0, 160:] = -1  # the last 96 tokens are padding: 3 of 8 blocks of 32
    q = summarize(pos, docs, 1, 256, 32)
    ranges, counts = schedule(q, q, causal=True)
    tiles = _tiles(ranges, counts)
    assert all(i < 5 and j < 5 for (_, i, j) in tiles)  # no row or column block of padding
    full, masked = visited_tiles(ranges, counts)
    assert (full, masked) == (10, 5)  # below the diagonal: full; the diagonal: masked; the rest skipped
