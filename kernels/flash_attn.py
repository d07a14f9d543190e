"""Triton flash attention, forward and backward, returning the log-sum-exp — the block function the
ring calls on each K/V block (contract in `kernels/reference.py`).

Forward: one program per (query block, batch × query head); an online softmax over key blocks in
base 2 with an fp32 accumulator. Causal masking compares *global* positions (`q_pos`, `k_pos`), so
a block at any ring offset is masked right, and a key block whose first position is past the query
block's last is skipped; document ids mask packed sequences (a key block whose id range misses the
query block's is skipped too). GQA: query head h reads K/V head h // (Hq / Hkv); K/V are never
repeated in memory. Any length (tails are masked), head dims up to 256, fp16/bf16/fp32.

Backward: a delta = rowsum(dO·O) pass, a dK/dV pass (one program per key block and K/V head, looping
over its query heads and query blocks) and a separate dQ pass, so no atomics. Both take the row's
saved out and lse, which a ring passes as the global ones.

Under TRITON_INTERPRET=1 (CPU) every tile is upcast to fp32 after loading (the interpreter's bf16
arithmetic is wrong) and a single block configuration is used (autotuning needs a GPU).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634  # 1 / ln 2: scores are exponentiated in base 2
LN2 = 0.6931471805599453

# --- helpers ---------------------------------------------------------------------------------------


@triton.jit
def _visible(q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """[BLOCK_M, BLOCK_N] mask: in range, causal by global position, same document."""
    mask = q_ok[:, None] & k_ok[None, :]
    if CAUSAL:
        mask = mask & (q_pos[:, None] >= k_pos[None, :])
    if HAS_DOCS:
        mask = mask & (q_doc[:, None] == k_doc[None, :])
    return mask


@triton.jit
def _load_ids(POS, DOC, offs, ok, pos_fill, doc_fill, HAS_DOCS: tl.constexpr):
    """Positions and document ids of a block's rows, and the document id range of its valid rows
    (without documents the range is a placeholder the callers ignore)."""
    pos = tl.load(POS + offs, mask=ok, other=pos_fill)
    doc = pos
    lo = tl.min(pos, axis=0)
    hi = lo
    if HAS_DOCS:
        doc = tl.load(DOC + offs, mask=ok, other=doc_fill)
        lo = tl.min(tl.where(ok, doc, 2147483647), axis=0)
        hi = tl.max(doc, axis=0)
    return pos, doc, lo, hi


@triton.jit
def _block_may_be_visible(q_pos_max, k_pos_min, q_doc_min, q_doc_max, k_doc_min, k_doc_max,
                          CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """False when no query of the block can see any key of the block (the block is skipped)."""
    ok = q_pos_max >= 0  # always true: positions are non-negative
    if CAUSAL:
        ok = ok & (k_pos_min <= q_pos_max)
    if HAS_DOCS:
        ok = ok & (k_doc_min <= q_doc_max) & (k_doc_max >= q_doc_min)
    return ok


# --- autotune space --------------------------------------------------------------------------------
# Small on purpose: block sizes of FlashAttention-2 on Hopper, with and without extra pipelining.

def _fwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4)]
    ]


def _bwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(64, 128, 8, 2), (64, 64, 4, 2), (32, 128, 4, 2), (128, 64, 8, 2)]
    ]


# --- forward ---------------------------------------------------------------------------------------


@triton.autotune(configs=_fwd_configs(), key=["SQ", "SK", "HEAD_DIM", "CAUSAL", "HAS_DOCS"])
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, QPOS, KPOS, QDOC, KDOC,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos, slb, slh,
    s_qpos_b, s_kpos_b, s_qdoc_b, s_kdoc_b,
    HQ, GROUPS, SQ, SK, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // GROUPS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_m < SQ
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :],
                mask=q_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    q_pos, q_doc, q_doc_min, q_doc_max = _load_ids(QPOS + b * s_qpos_b, QDOC + b * s_qdoc_b, offs_m, q_ok,
                                                   -1, -1, HAS_DOCS)
    q_pos_max = tl.max(q_pos, axis=0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    for start_n in range(0, SK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ok = offs_n < SK
        k_pos, k_doc, k_doc_min, k_doc_max = _load_ids(KPOS + b * s_kpos_b, KDOC + b * s_kdoc_b, offs_n, k_ok,
                                                       2147483647, -2, HAS_DOCS)
        if _block_may_be_visible(q_pos_max, tl.min(k_pos, axis=0), q_doc_min, q_doc_max, k_doc_min, k_doc_max,
                                 CAUSAL, HAS_DOCS):
            kt = tl.load(k_base + offs_n[None, :] * sks + offs_d[:, None],
                         mask=k_ok[None, :] & d_ok[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            v = tl.load(v_base + offs_n[:, None] * svs + offs_d[None, :],
                        mask=k_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            if UPCAST:
                kt = kt.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, kt) * qk_scale  # [BLOCK_M, BLOCK_N], base-2 logits
            mask = _visible(q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, CAUSAL, HAS_DOCS)
            s = tl.where(mask, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])
    tl.store(LSE + b * slb + h * slh + offs_m, lse, mask=q_ok)


# --- backward --------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(O, DO, DELTA, sob, soh, sos, sdb, sdh, sds, HQ, SQ,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < SQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh * SQ + offs_m, delta, mask=offs_m < SQ)


@triton.jit
def _recompute_p(q, kt, lse2, q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, qk_scale,
                 CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """Probabilities of a tile from the saved (global) lse; zero where masked."""
    s = tl.dot(q, kt) * qk_scale
    mask = _visible(q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, CAUSAL, HAS_DOCS)
    return tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)


@triton.autotune(configs=_bwd_configs(), key=["SQ", "SK", "HEAD_DIM", "CAUSAL", "HAS_DOCS"])
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QPOS, KPOS, QDOC, KDOC,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds, slb, slh,
    sdkb, sdkh, sdks, sdvb, sdvh, sdvs,
    s_qpos_b, s_kpos_b, s_qdoc_b, s_kdoc_b,
    HQ, HKV, GROUPS, SQ, SK, qk_scale, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ok = offs_n < SK
    d_ok = offs_d < HEAD_DIM
    kt = tl.load(K + b * skb + hk * skh + offs_n[None, :] * sks + offs_d[:, None],
                 mask=k_ok[None, :] & d_ok[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
    vt = tl.load(V + b * svb + hk * svh + offs_n[None, :] * svs + offs_d[:, None],
                 mask=k_ok[None, :] & d_ok[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
    if UPCAST:
        kt = kt.to(tl.float32)
        vt = vt.to(tl.float32)
    k_pos, k_doc, k_doc_min, k_doc_max = _load_ids(KPOS + b * s_kpos_b, KDOC + b * s_kdoc_b, offs_n, k_ok,
                                                   2147483647, -2, HAS_DOCS)
    k_pos_min = tl.min(k_pos, axis=0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        for start_m in range(0, SQ, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q_ok = offs_m < SQ
            q_pos, q_doc, q_doc_min, q_doc_max = _load_ids(QPOS + b * s_qpos_b, QDOC + b * s_qdoc_b, offs_m,
                                                           q_ok, -1, -1, HAS_DOCS)
            if _block_may_be_visible(tl.max(q_pos, axis=0), k_pos_min, q_doc_min, q_doc_max, k_doc_min,
                                     k_doc_max, CAUSAL, HAS_DOCS):
                tile = q_ok[:, None] & d_ok[None, :]
                q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=tile, other=0.0)
                do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :], mask=tile, other=0.0)
                if UPCAST:
                    q = q.to(tl.float32)
                    do = do.to(tl.float32)
                lse = tl.load(LSE + b * slb + h * slh + offs_m, mask=q_ok, other=0.0)
                lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
                delta = tl.load(DELTA + (b * HQ + h) * SQ + offs_m, mask=q_ok, other=0.0)
                p = _recompute_p(q, kt, lse2, q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, qk_scale,
                                 CAUSAL, HAS_DOCS)  # [BLOCK_M, BLOCK_N]
                dv += tl.dot(tl.trans(p).to(do.dtype), do)
                dp = tl.dot(do, vt)  # [BLOCK_M, BLOCK_N]
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    dk = dk * softmax_scale
    tile = k_ok[:, None] & d_ok[None, :]
    tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdks + offs_d[None, :], dk, mask=tile)
    tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvs + offs_d[None, :], dv, mask=tile)


@triton.autotune(configs=_bwd_configs(), key=["SQ", "SK", "HEAD_DIM", "CAUSAL", "HAS_DOCS"])
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, QPOS, KPOS, QDOC, KDOC,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds, slb, slh, sdqb, sdqh, sdqs,
    s_qpos_b, s_kpos_b, s_qdoc_b, s_kdoc_b,
    HQ, GROUPS, SQ, SK, qk_scale, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // GROUPS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_m < SQ
    d_ok = offs_d < HEAD_DIM
    tile = q_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=tile, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :], mask=tile, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + b * slb + h * slh + offs_m, mask=q_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
    delta = tl.load(DELTA + bh * SQ + offs_m, mask=q_ok, other=0.0)
    q_pos, q_doc, q_doc_min, q_doc_max = _load_ids(QPOS + b * s_qpos_b, QDOC + b * s_qdoc_b, offs_m, q_ok,
                                                   -1, -1, HAS_DOCS)
    q_pos_max = tl.max(q_pos, axis=0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, SK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ok = offs_n < SK
        k_pos, k_doc, k_doc_min, k_doc_max = _load_ids(KPOS + b * s_kpos_b, KDOC + b * s_kdoc_b, offs_n, k_ok,
                                                       2147483647, -2, HAS_DOCS)
        if _block_may_be_visible(q_pos_max, tl.min(k_pos, axis=0), q_doc_min, q_doc_max, k_doc_min, k_doc_max,
                                 CAUSAL, HAS_DOCS):
            kt = tl.load(K + b * skb + hk * skh + offs_n[None, :] * sks + offs_d[:, None],
                         mask=k_ok[None, :] & d_ok[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            vt = tl.load(V + b * svb + hk * svh + offs_n[None, :] * svs + offs_d[:, None],
                         mask=k_ok[None, :] & d_ok[:, None], other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            p = _recompute_p(q, kt, lse2, q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, qk_scale, CAUSAL, HAS_DOCS)
            dp = tl.dot(do, vt)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(kt.dtype), tl.trans(kt))
    dq = dq * softmax_scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqs + offs_d[None, :], dq, mask=tile)


# --- launchers -------------------------------------------------------------------------------------


def _ints(x: torch.Tensor | None, batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """An int32 `[B, S]` view (batch stride 0 for a shared `[S]` or `[1, S]`), and its batch stride."""
    if x is None:
        x = torch.arange(length, device=device, dtype=torch.int32)
    if x.shape[-1] != length or (x.dim() == 2 and x.shape[0] not in (1, batch)) or x.dim() > 2:
        raise ValueError(f"positions / document ids must be [S] or [B, S] with B={batch}, S={length}; "
                         f"got {tuple(x.shape)}")
    x = x.to(device=device, dtype=torch.int32).contiguous()
    if x.dim() == 1 or x.shape[0] == 1:
        return x.reshape(-1), 0
    return x, x.stride(0)


def _common(q, k, q_pos, k_pos, doc_q, doc_k):
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of K/V heads ({k.shape[1]})")
    if (doc_q is None) != (doc_k is None):
        raise ValueError("doc_q and doc_k must be given together")
    b, sq, sk = q.shape[0], q.shape[2], k.shape[2]
    qpos, s_qpos = _ints(q_pos, b, sq, q.device)
    kpos, s_kpos = _ints(k_pos, b, sk, q.device)
    has_docs = doc_q is not None
    qdoc, s_qdoc = _ints(doc_q, b, sq, q.device) if has_docs else (qpos, 0)
    kdoc, s_kdoc = _ints(doc_k, b, sk, q.device) if has_docs else (kpos, 0)
    return qpos, kpos, qdoc, kdoc, (s_qpos, s_kpos, s_qdoc, s_kdoc), has_docs


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def triton_block_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float, causal: bool,
    q_pos=None, k_pos=None, doc_q=None, doc_k=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of one block: (out `[B, Hq, Sq, D]` in q's dtype, lse fp32 `[B, Hq, Sq]`)."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    qpos, kpos, qdoc, kdoc, strides, has_docs = _common(q, k, q_pos, k_pos, doc_q, doc_k)
    out = torch.empty_like(q)
    lse = torch.empty((b, hq, sq), device=q.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(sq, meta["BLOCK_M"]), b * hq)

    _fwd_kernel[grid](
        q, k, v, out, lse, qpos, kpos, qdoc, kdoc,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), *strides,
        hq, hq // hkv, sq, sk, softmax_scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=_block_d(d), CAUSAL=causal, HAS_DOCS=has_docs, UPCAST=INTERPRET,
    )
    return out, lse


def triton_block_attn_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    *, softmax_scale: float, causal: bool, q_pos=None, k_pos=None, doc_q=None, doc_k=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of one block from the row's (global) out and lse: fp32 (dq, dk, dv)."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    q, k, v, out, dout = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, out, dout))
    lse = lse.float().contiguous()
    qpos, kpos, qdoc, kdoc, strides, has_docs = _common(q, k, q_pos, k_pos, doc_q, doc_k)
    block_d = _block_d(d)
    delta = torch.empty((b, hq, sq), device=q.device, dtype=torch.float32)
    _delta_kernel[(triton.cdiv(sq, 64), b * hq)](
        out, dout, delta, out.stride(0), out.stride(1), out.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2), hq, sq, HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=64,
    )
    dq = torch.empty((b, hq, sq, d), device=q.device, dtype=torch.float32)
    dk = torch.empty((b, hkv, sk, d), device=q.device, dtype=torch.float32)
    dv = torch.empty((b, hkv, sk, d), device=q.device, dtype=torch.float32)
    common = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        lse.stride(0), lse.stride(1),
    )
    flags = dict(HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal, HAS_DOCS=has_docs, UPCAST=INTERPRET)
    scale2 = softmax_scale * LOG2E

    def grid_kv(meta):
        return (triton.cdiv(sk, meta["BLOCK_N"]), b * hkv)

    _bwd_dkdv_kernel[grid_kv](
        q, k, v, dout, lse, delta, dk, dv, qpos, kpos, qdoc, kdoc, *common,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), *strides,
        hq, hkv, hq // hkv, sq, sk, scale2, softmax_scale, **flags,
    )

    def grid_q(meta):
        return (triton.cdiv(sq, meta["BLOCK_M"]), b * hq)

    _bwd_dq_kernel[grid_q](
        q, k, v, dout, lse, delta, dq, qpos, kpos, qdoc, kdoc, *common,
        dq.stride(0), dq.stride(1), dq.stride(2), *strides,
        hq, hq // hkv, sq, sk, scale2, softmax_scale, **flags,
    )
    return dq, dk, dv


# --- autograd and the public function --------------------------------------------------------------


class _FlashAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, causal, q_pos, k_pos, doc_q, doc_k):
        out, lse = triton_block_attn(q, k, v, softmax_scale=softmax_scale, causal=causal, q_pos=q_pos,
                                     k_pos=k_pos, doc_q=doc_q, doc_k=doc_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = dict(softmax_scale=softmax_scale, causal=causal, q_pos=q_pos, k_pos=k_pos,
                            doc_q=doc_q, doc_k=doc_k)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = triton_block_attn_backward(dout, q, k, v, out, lse, **ctx.settings)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def flash_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float | None = None,
    causal: bool = False, q_pos=None, k_pos=None, doc_q=None, doc_k=None, return_lse: bool = False,
):
    """Differentiable flash attention. q `[B, Hq, Sq, D]`, k/v `[B, Hkv, Sk, D]` (GQA: Hq % Hkv == 0).

    `softmax_scale` defaults to 1/sqrt(D). Positions (`[S]` or `[B, S]`, default 0..S-1) decide the
    causal mask; document ids (`[S]` or `[B, S]`) keep packed sequences apart. Returns out
    `[B, Hq, Sq, D]`, and the fp32 log-sum-exp `[B, Hq, Sq]` when `return_lse`.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, lse = _FlashAttnFunc.apply(q, k, v, scale, causal, q_pos, k_pos, doc_q, doc_k)
    return (out, lse) if return_lse else out
