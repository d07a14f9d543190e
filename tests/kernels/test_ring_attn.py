"""Ring attention over real torch.distributed (gloo) processes equals full attention unsharded."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kernels.reference import block_attn, block_attn_backward
from kernels.ring_attn import RingComm, causal_work, ring_attn, shard_positions
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
