"""Ring attention over real torch.distributed (gloo) processes equals full attention unsharded."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kernels.reference import block_attn, block_attn_backward, visibility
from kernels.ring_attn import (
    RingComm, attention_work, balanced_positions, balanced_shards, causal_work, imbalance, ring_attn, shard_positions,
    token_work,
)
from tests.servers import free_port

# (name, world, layout, dtype, Hq, Hkv, S, docs, triton blocks)
CASES = [
    ("zigzag_w2_fp64_gqa_docs", 2, "zigzag", torch.float64, 4, 2, 24, True, False),
    ("contiguous_w2_fp32", 2, "contiguous", torch.float32, 2, 2, 20, False, False),
    ("zigzag_w4_fp32_gqa", 4, "zigzag", torch.float32, 4, 1, 32, False, False),
    ("contiguous_w4_fp64_docs", 4, "contiguous", torch.float64, 2, 1, 24, True, False),
    ("zigzag_w2_triton_blocks", 2, "zigzag", torch.float32, 2, 1, 32, True, True),
]


def _worker(rank: int, world: int, port: int, case: tuple) -> None:
    name, _, layout, dtype, hq, hkv, s, docs, use_triton = case
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        b, d = 2, 16
        q = torch.randn(b, hq, s, d, generator=g, dtype=dtype)
        k = torch.randn(b, hkv, s, d, generator=g, dtype=dtype)
        v = torch.randn(b, hkv, s, d, generator=g, dtype=dtype)
        dout = torch.randn(b, hq, s, d, generator=g, dtype=dtype)
        doc = torch.stack([torch.arange(s) // 7, torch.arange(s) // 11]) if docs else None
        scale = d ** -0.5
        ref_out, ref_lse = block_attn(q, k, v, softmax_scale=scale, causal=True, doc_q=doc, doc_k=doc)
        ref_dq, ref_dk, ref_dv = block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=scale,
                                                     causal=True, doc_q=doc, doc_k=doc)
        pos = shard_positions(s, world, rank, layout)
        local = [t[:, :, pos].clone().requires_grad_() for t in (q, k, v)]
        kw = {}
        if use_triton:
            from kernels.flash_attn import triton_block_attn, triton_block_attn_backward

            kw = dict(block_attn_fn=triton_block_attn, block_attn_backward_fn=triton_block_attn_backward)
        comm = RingComm(None)
        out = ring_attn(*local, positions=pos, doc_ids=doc[:, pos] if docs else None, softmax_scale=scale,
                        comm=comm, **kw)
        out.backward(dout[:, :, pos])
        tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, ref_out[:, :, pos], **tol, msg=f"{name} out rank {rank}")
        for got, want, what in zip([t.grad for t in local], (ref_dq, ref_dk, ref_dv), "qkv"):
            torch.testing.assert_close(got, want[:, :, pos].to(dtype), **tol, msg=f"{name} d{what} rank {rank}")
        # only K/V heads travel: forward W-1 hops of (k, v, positions[, docs]); backward the same plus W hops of fp32 dK/dV
        kv = 2 * b * hkv * (s // world) * d * q.element_size()
        meta = pos.numel() * 8 + ((doc[:, pos].numel() * 8) if docs else 0)
        acc = 2 * b * hkv * (s // world) * d * torch.promote_types(dtype, torch.float32).itemsize
        assert comm.bytes_sent == 2 * (world - 1) * (kv + meta) + world * acc, (name, comm.bytes_sent)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ring_equals_full_attention(case):
    mp.start_processes(_worker, args=(case[1], free_port(), case), nprocs=case[1], start_method="spawn")


def test_zigzag_balances_causal_work_and_contiguous_does_not():
    for world in range(2, 9):
        zig = causal_work(16 * world * 8, world, "zigzag")
        assert max(zig) / (sum(zig) / world) <= 1.02, world
        contiguous = causal_work(16 * world * 8, world, "contiguous")
        # the last rank does (2W-1)/W times the mean: 1.5 at W=2, approaching 2
        assert max(contiguous) / (sum(contiguous) / world) >= (2 * world - 1) / world - 0.01, world


def test_layouts_cover_the_sequence_once():
    for layout in ("zigzag", "contiguous"):
        held = torch.cat([shard_positions(48, 4, r, layout) for r in range(4)])
        assert sorted(held.tolist()) == list(range(48))
    with pytest.raises(ValueError, match="zigzag needs seq_len=30 divisible by 2 x world=8"):
        shard_positions(30, 4, 0)


def test_ring_partials_stay_fp32_until_merged():
    """Rounding each hop's partial output to bf16 before the fp32 merge drifts from the fp64 answer more than
    keeping it fp32; the ring asks its block function for fp32 partials."""
    from kernels.ring_attn import merge

    g = torch.Generator().manual_seed(0)
    b, h, s, d, hops = 1, 4, 64, 64, 16
    q, k, v = (torch.randn(b, h, s if i == 0 else s * hops, d, generator=g).to(torch.bfloat16) for i in range(3))
    exact, _ = block_attn(q.double(), k.double(), v.double(), softmax_scale=d ** -0.5, causal=False)
    errors = {}
    for partial in (torch.bfloat16, torch.float32):
        out = torch.zeros(b, h, s, d)
        lse = torch.full((b, h, s), float("-inf"))
        for hop in range(hops):
            sl = slice(hop * s, (hop + 1) * s)
            o, l = block_attn(q, k[:, :, sl], v[:, :, sl], softmax_scale=d ** -0.5, causal=False, out_dtype=partial)
            merge(out, lse, o, l)
        errors[partial] = (out.double() - exact).abs().max().item()
    assert errors[torch.float32] < errors[torch.bfloat16] / 4, errors

    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("out_dtype"))
        return block_attn(*args, **kwargs)

    ring_attn(q, k[:, :, :s], v[:, :, :s], positions=torch.arange(s), comm=RingComm(None), block_attn_fn=spy)
    assert asked == [torch.float32]


def _packed_docs(seq_len: int, valid: int, seed: int) -> torch.Tensor:
    """Document ids of one packed row: random documents over the first `valid` tokens, then padding (-1)."""
    g = torch.Generator().manual_seed(seed)
    docs, at, d = torch.full((seq_len,), -1), 0, 0
    while at < valid:
        n = min(valid - at, int(torch.randint(1, max(2, valid // 2 + 1), (1,), generator=g)))
        docs[at:at + n], at, d = d, at + n, d + 1
    return docs


def _brute_work(shards: list[torch.Tensor], docs: torch.Tensor, bq: int, bk: int) -> tuple[list[int], list[int]]:
    """Pairs and tiles per rank from the whole visibility matrix of each (rank, K/V shard) pair."""
    tokens, tiles = [], []
    for q in shards:
        seen = [visibility(1, q.numel(), k.numel(), True, q, k, docs[q], docs[k])[0, 0] for k in shards]
        tokens.append(sum(int(m.sum()) for m in seen))
        tiles.append(sum(bool(m[a:a + bq, c:c + bk].any()) for m in seen for a in range(0, m.shape[0], bq)
                         for c in range(0, m.shape[1], bk)))
    return tokens, tiles


def test_padding_aware_layouts_cover_each_row_once_in_ascending_shards_and_work_is_counted_exactly():
    for trial in range(24):
        world, block = (1, 2, 3, 4)[trial % 4], (4, 8)[trial % 2]
        seq_len = 2 * world * block * (1 + trial % 3)
        valid = (seq_len * (trial % 5)) // 4 if trial % 5 < 4 else seq_len - 1  # 0%, 25%, 50%, 75%, all but one
        docs = _packed_docs(seq_len, valid, trial)
        seen = visibility(1, seq_len, seq_len, True, doc_q=docs, doc_k=docs)[0, 0]
        assert torch.equal(token_work(docs), seen.sum(-1))
        rounds = 1 + trial % 3
        for shards in ([balanced_positions(valid, seq_len, world, r, block, rounds) for r in range(world)],
                       balanced_shards(docs, world, block, block // 2)):
            assert sorted(torch.cat(shards).tolist()) == list(range(seq_len)), (trial, valid)
            for s in shards:
                assert s.numel() == seq_len // world and bool((s[1:] > s[:-1]).all())
            work = attention_work(shards, docs, block_q=block, block_k=block // 2, tiles_per_pass=64)
            assert work == _brute_work(shards, docs, block, block // 2), trial


def test_a_row_sixty_percent_filled_is_balanced_by_the_padding_aware_layouts_and_not_by_the_zigzag():
    seq_len = 1 << 15  # the 1M-token row in proportion
    docs = torch.full((seq_len,), -1)
    docs[:int(0.6 * seq_len)] = 0
    for world in (2, 4, 8):
        old = attention_work([shard_positions(seq_len, world, r) for r in range(world)], docs)
        assert imbalance(old[0]) > 1.5 and imbalance(old[1]) > 1.5, world
        tokens, tiles = attention_work(balanced_shards(docs, world), docs)
        assert imbalance(tokens) <= 1.02 and imbalance(tiles) <= 1.02, (world, tokens, tiles)


def test_best_fit_packed_rows_of_long_tailed_samples_are_balanced_within_two_percent():
    from lightning_modules.data import best_fit

    seq_len = 1 << 17
    g = torch.Generator().manual_seed(0)
    lengths = torch.exp(torch.empty(48).uniform_(11 * math.log(2), 17 * math.log(2), generator=g)).long().tolist()
    rows = best_fit(lengths, seq_len)
    for row in rows:
        docs, at = torch.full((seq_len,), -1), 0
        for d, i in enumerate(row):
            docs[at:at + lengths[i]], at = d, at + lengths[i]
        work = token_work(docs)  # pairs of each query: the token-level count, fast at 128k
        for world in (2, 4, 8):
            shards = balanced_shards(docs, world)
            assert imbalance([int(work[s].sum()) for s in shards]) <= 1.02, (row, world)
    tokens, tiles = attention_work(balanced_shards(docs, 8), docs)  # the last (least filled) row, block level too
    assert imbalance(tokens) <= 1.02 and imbalance(tiles) <= 1.02
