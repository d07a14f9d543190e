"""Triton flash attention against the torch reference: forward, lse and all three gradients.

On CPU the kernels run under TRITON_INTERPRET=1 (set in conftest) in fp32 at small sizes; on a GPU
the `gpu` tests compare fp16/bf16 at long lengths.
"""

import math

import pytest
import torch

from kernels.flash_attn import flash_attn, triton_block_attn, triton_block_attn_backward
from kernels.reference import block_attn, block_attn_backward

CASES = [
    # (name, B, Hq, Hkv, Sq, Sk, D, causal, q_offset, docs)
    ("plain", 1, 2, 2, 40, 40, 64, False, 0, False),
    ("causal", 1, 2, 2, 45, 45, 64, True, 0, False),
    ("causal_gqa2_odd", 2, 4, 2, 37, 37, 32, True, 0, False),
    ("gqa4_d128", 1, 4, 1, 33, 29, 128, False, 0, False),
    ("ring_offset_future_block", 1, 2, 1, 32, 40, 64, True, 64, False),  # q after all keys: sees all
    ("ring_offset_past_block", 1, 2, 1, 32, 40, 64, True, -64, False),  # keys all in the future: sees none
    ("ring_offset_partial", 1, 2, 2, 40, 40, 16, True, 20, False),
    ("docs", 2, 2, 1, 50, 50, 32, False, 0, True),
    ("docs_causal_gqa", 1, 4, 2, 70, 70, 64, True, 0, True),
]


def _inputs(b, hq, hkv, sq, sk, d, q_offset, docs, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, hq, sq, d, generator=g).to(device, dtype)
    k = torch.randn(b, hkv, sk, d, generator=g).to(device, dtype)
    v = torch.randn(b, hkv, sk, d, generator=g).to(device, dtype)
    dout = torch.randn(b, hq, sq, d, generator=g).to(device, dtype)
    kw = {}
    if q_offset:
        base = 64  # keys at 64..64+sk-1, queries shifted by q_offset
        kw["k_pos"] = torch.arange(base, base + sk, device=device)
        kw["q_pos"] = torch.arange(base + q_offset, base + q_offset + sq, device=device)
    if docs:
        # packed documents of uneven lengths, different per batch row
        doc = torch.stack([torch.div(torch.arange(sq) + 7 * i, 17 + 5 * i, rounding_mode="floor") for i in range(b)])
        kw["doc_q"] = doc.to(device)
        kw["doc_k"] = doc[:, :sk].to(device)
    return q, k, v, dout, kw


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_match_the_reference(case):
    _, b, hq, hkv, sq, sk, d, causal, offset, docs = case
    q, k, v, dout, kw = _inputs(b, hq, hkv, sq, sk, d, offset, docs)
    scale = 1 / math.sqrt(d)
    out, lse = triton_block_attn(q, k, v, softmax_scale=scale, causal=causal, **kw)
    ref_out, ref_lse = block_attn(q, k, v, softmax_scale=scale, causal=causal, **kw)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    grads = triton_block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=scale, causal=causal, **kw)
    ref_grads = block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=scale, causal=causal, **kw)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def test_rows_without_visible_keys_give_zeros_and_minus_inf_never_nan():
    q, k, v, dout, kw = _inputs(1, 2, 2, 32, 32, 32, -64, False)
    out, lse = flash_attn(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), causal=True,
                          return_lse=True, **kw)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
    out.backward(dout)
    for t in (q, k, v):
        assert torch.all(t.grad == 0) and not torch.isnan(t.grad).any()
    # partly visible: the first document's rows see their own keys only
    doc_q = torch.tensor([0] * 16 + [1] * 16)
    doc_k = torch.tensor([1] * 32)
    out2, lse2 = triton_block_attn(q.detach(), k.detach(), v.detach(), softmax_scale=0.2, causal=False,
                                   doc_q=doc_q, doc_k=doc_k)
    assert torch.all(out2[:, :, :16] == 0) and torch.all(torch.isneginf(lse2[:, :, :16]))
    assert torch.isfinite(lse2[:, :, 16:]).all()


def test_autograd_function_matches_torch_sdpa():
    q, k, v, dout, _ = _inputs(1, 4, 2, 48, 48, 64, 0, False)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attn(*leaves, causal=True).backward(dout)
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    expect = torch.nn.functional.scaled_dot_product_attention(*ref, is_causal=True, enable_gqa=True)
    expect.backward(dout)
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-4, rtol=1e-4)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gpu_half_precision_against_fp32_reference(case, dtype):
    _, b, hq, hkv, sq, sk, d, causal, offset, docs = case
    q, k, v, dout, kw = _inputs(b, hq, hkv, sq * 40, sk * 40 if not docs else sq * 40, d, offset * 40, docs,
                                dtype=dtype, device="cuda")
    if docs:
        kw["doc_q"] = torch.div(torch.arange(q.shape[2], device="cuda"), 700, rounding_mode="floor")
        kw["doc_k"] = kw["doc_q"][: k.shape[2]]
    scale = 1 / math.sqrt(d)
    out, lse = triton_block_attn(q, k, v, softmax_scale=scale, causal=causal, **kw)
    ref_out, ref_lse = block_attn(q, k, v, softmax_scale=scale, causal=causal, **kw)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=tol, rtol=tol)
    grads = triton_block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=scale, causal=causal, **kw)
    ref_grads = block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=scale, causal=causal, **kw)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        scale_of = want.abs().max().item() + 1e-6
        assert (got - want).abs().max().item() / scale_of < 5 * tol, name


def test_positions_shared_by_the_batch_may_come_as_one_row():
    """Hugging Face passes position_ids `[1, S]` for a whole batch: every row must read that one row."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, 2, 20, 16, generator=g) for _ in range(3))
    pos = torch.arange(20) + 5
    want = flash_attn(q, k, v, causal=True, q_pos=pos, k_pos=pos)
    got = flash_attn(q, k, v, causal=True, q_pos=pos[None], k_pos=pos[None])
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"must be \[S\] or \[B, S\] with B=3, S=20; got \(2, 20\)"):
        flash_attn(q, k, v, causal=True, q_pos=pos.expand(2, -1), k_pos=pos.expand(2, -1))


def test_padding_is_seen_by_nothing_and_sees_nothing():
    """Document id < 0 is padding: its rows give zeros and lse -inf, no real row attends to it, gradients match."""
    q, k, v, dout, _ = _inputs(2, 4, 2, 70, 70, 32, 0, False)
    docs = torch.stack([torch.arange(70) // 30, torch.arange(70) // 25])
    docs[1, 50:] = -1  # padding at the end of the second row (two whole blocks of 32 and part of one)
    kw = dict(doc_q=docs, doc_k=docs)
    out, lse = triton_block_attn(q, k, v, softmax_scale=0.2, causal=True, **kw)
    ref_out, ref_lse = block_attn(q, k, v, softmax_scale=0.2, causal=True, **kw)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    assert torch.all(out[1, :, 50:] == 0) and torch.all(torch.isneginf(lse[1, :, 50:]))
    # changing the padded keys changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 50:], v2[1, :, 50:] = 100.0, -100.0
    torch.testing.assert_close(triton_block_attn(q, k2, v2, softmax_scale=0.2, causal=True, **kw)[0], out)
    grads = triton_block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=0.2, causal=True, **kw)
    ref_grads = block_attn_backward(dout, q, k, v, ref_out, ref_lse, softmax_scale=0.2, causal=True, **kw)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
        assert torch.all(got[1, :, 50:] == 0), name


_BIG_STRIDE = r'''
import sys, torch
from kernels.flash_attn import flash_attn
from kernels.reference import block_attn, block_attn_backward
# q as a [B, S, H, D] tensor seen as [B, H, S, D]: the row stride is H*D = 2**25 elements, so row 64
# starts 2**31 elements in: an int32 offset overflows there. Only the rows used are ever touched
# (the untouched pages of the 8 GiB allocation stay virtual).
S, D, HD = 96, 16, 2 ** 25
base = torch.empty(1, S, HD, dtype=torch.float16)
q = base[:, :, :D].unsqueeze(1)  # [1, 1, S, D], strides (S*HD, D, HD, 1)
g = torch.Generator().manual_seed(0)
q.copy_(torch.randn(1, 1, S, D, generator=g).half())
k, v, do = (torch.randn(1, 1, S, D, generator=g).half() for _ in range(3))
leaves = [t.requires_grad_() for t in (q.detach(), k, v)]
out = flash_attn(*leaves, causal=True)
out.float().backward(do.float())
small = q.detach().contiguous()
ref, lse = block_attn(small, k.detach(), v.detach(), softmax_scale=D ** -0.5, causal=True)
dq = block_attn_backward(do, small, k.detach(), v.detach(), ref, lse, softmax_scale=D ** -0.5, causal=True)[0]
err = max((out.detach().float() - ref.float()).abs().max().item(), (leaves[0].grad.float() - dq).abs().max().item())
print("max error", err)
sys.exit(0 if err < 1e-2 else 1)
'''


@pytest.mark.slow
def test_offsets_past_two_to_the_31_elements_are_computed_in_int64():
    """A targeted interpreter case: q's row stride times its row index passes 2**31 (as 1M tokens x 32 heads x
    128 does in `[B, S, H, D]` memory). int32 index arithmetic wraps there and reads the wrong rows (or crashes)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-c", _BIG_STRIDE], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, (result.returncode, result.stdout[-500:], result.stderr[-2000:])


def test_a_schedule_is_reused_for_the_same_ids_and_never_for_changed_ones():
    """Every layer passes the same position / document tensors: their schedule is made once; an id tensor
    changed in place (or a new one) gets a new schedule, so the result still matches the reference."""
    import importlib

    fa = importlib.import_module("kernels.flash_attn")
    q, k, v, _, _ = _inputs(1, 2, 2, 64, 64, 16, 0, False)
    docs = torch.arange(64) // 20
    fa._SCHEDULES.clear()
    for _ in range(3):
        triton_block_attn(q, k, v, softmax_scale=0.25, causal=True, doc_q=docs, doc_k=docs)
    assert len(fa._SCHEDULES) == 1
    docs[:40] = 7  # in place: the version counter moves, the old schedule is not used
    out, _ = triton_block_attn(q, k, v, softmax_scale=0.25, causal=True, doc_q=docs, doc_k=docs)
    want, _ = block_attn(q, k, v, softmax_scale=0.25, causal=True, doc_q=docs, doc_k=docs)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(fa._SCHEDULES) == 2
