"""Triton flash attention, forward and backward, returning the log-sum-exp — the block function the
ring calls on each K/V block (contract in `kernels/reference.py`).

Loop bounds, not branches: `kernels.block_schedule` gives each query block the runs of key blocks it
can see (causal by *global* position, same document, padding — document id < 0 — seen by nothing),
split into *full* runs, computed with no mask at all, and *masked* runs (diagonal, document
boundaries, tails), where the element mask is applied. The inner loops therefore have plain bounds
and no `if`, which lets Triton software-pipeline them (async copies of the next K/V, Q/dO tiles
while the current one computes); skipped blocks are never visited.

Forward: one program per (query block, batch × query head); an online softmax in base 2 with an fp32
accumulator, `tl.dot(p, v, acc)`. GQA: query head h reads K/V head h // (Hq / Hkv); K/V are never
repeated in memory. Backward (as in Triton's fused-attention tutorial): a delta = rowsum(dO·O) pass,
a dK/dV pass (one program per key block and K/V head, computing Sᵀ so no transposed tile is stored,
looping over its query heads and the query blocks that see it) and a separate dQ pass; no atomics.
Both take the row's saved out and lse, which a ring passes as the global ones.

Every base offset is int64 (q in `[B, S, H, D]` memory has row stride H·D: 1M tokens × 32 heads × 128
overflows int32); in-tile offsets stay int32. q, k, v must share one dtype (the launcher says which
differ); the block sizes are fixed per head dim (the schedule is made for them) and the autotuner picks
warps and pipeline stages among configurations that compile without register spills on sm_90
(`tests/kernels/compile_check.py` checks it).

Under TRITON_INTERPRET=1 (CPU) every tile is upcast to fp32 after loading (the interpreter's bf16
arithmetic is wrong) and 32 × 32 blocks with a single configuration are used (autotuning needs a GPU).
"""

from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from kernels.block_schedule import schedule, summarize

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634  # 1 / ln 2: scores are exponentiated in base 2

# Observers of every launch (tests record the dtypes and shapes the real training step produces, then
# compile exactly those for sm_90): called with (kernel name, {argument: tensor or value}, constexprs).
LAUNCH_OBSERVERS: list[Callable[[str, dict, dict], None]] = []


def blocks(head_dim: int) -> dict[str, tuple[int, int]]:
    """(rows, columns) of the tiles of each pass: fwd (queries, keys), dkdv (keys, queries), dq (queries, keys).
    Chosen with the warps and stages of `SPACE` so that nothing spills on sm_90 at head dims 64 and 128."""
    if INTERPRET:
        return {"fwd": (32, 32), "dkdv": (32, 32), "dq": (32, 32)}
    if head_dim <= 64:
        return {"fwd": (128, 128), "dkdv": (128, 32), "dq": (128, 64)}
    if head_dim <= 128:
        return {"fwd": (128, 64), "dkdv": (64, 32), "dq": (128, 64)}
    return {"fwd": (64, 32), "dkdv": (32, 32), "dq": (64, 32)}  # head dim 256: correct, not tuned


# --- autotune space: warps and pipeline stages (block sizes are fixed by `blocks`) -------------------

SPACE = [(8, 2), (8, 3)]  # (num_warps, num_stages): two warpgroups; 4 warps spill at these tile sizes
FWD_SPACE = DKDV_SPACE = DQ_SPACE = SPACE
TUNE_KEY = ["SQ", "SK", "HEAD_DIM", "CAUSAL", "HAS_DOCS"]


def _configs(space: list[tuple[int, int]]) -> list[triton.Config]:
    if INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in space]


# --- helpers ---------------------------------------------------------------------------------------


@triton.jit
def _mask(q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """[rows, cols] visibility of a masked tile: in range, causal by global position, same real document."""
    mask = q_ok[:, None] & k_ok[None, :]
    if CAUSAL:
        mask = mask & (q_pos[:, None] >= k_pos[None, :])
    if HAS_DOCS:
        mask = mask & (q_doc[:, None] == k_doc[None, :]) & (k_doc[None, :] >= 0)
    return mask


@triton.jit
def _ids(POS, DOC, offs, ok, pos_fill, HAS_DOCS: tl.constexpr):
    """Positions and document ids of a block's rows (out of range: `pos_fill`, document -1)."""
    pos = tl.load(POS + offs, mask=ok, other=pos_fill)
    doc = pos
    if HAS_DOCS:
        doc = tl.load(DOC + offs, mask=ok, other=-1)
    return pos, doc


@triton.jit
def _runs_of(RANGES, COUNTS, b, s_rb, s_cb, pid, R):
    """Where this row block's runs start in `RANGES`, and how many are full and masked."""
    row = RANGES + b * s_rb + pid * (R * 2)
    return row, tl.load(COUNTS + b * s_cb + pid * 2), tl.load(COUNTS + b * s_cb + pid * 2 + 1)


@triton.jit
def _kv_tiles(k_base, v_base, start_n, sks, svs, SK, offs_d, d_ok, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              EVEN_D: tl.constexpr, UPCAST: tl.constexpr, V_T: tl.constexpr):
    """Kᵀ `[D, N]` and V `[N, D]` (or Vᵀ `[D, N]` with V_T) of the key block at `start_n`, its rows and which
    are in range; loads are masked only in a masked run (or for a head dim below its power of two)."""
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_n = start_n + offs_n0
    base_n = tl.cast(start_n, tl.int64)
    k_ok = offs_n < SK
    kt_ptrs = k_base + base_n * sks + offs_n0[None, :] * sks + offs_d[:, None]  # [D, N]
    if V_T:
        v_ptrs = v_base + base_n * svs + offs_n0[None, :] * svs + offs_d[:, None]  # [D, N]
        v_mask = k_ok[None, :] & d_ok[:, None]
        v_dmask = d_ok[:, None]
    else:
        v_ptrs = v_base + base_n * svs + offs_n0[:, None] * svs + offs_d[None, :]  # [N, D]
        v_mask = k_ok[:, None] & d_ok[None, :]
        v_dmask = d_ok[None, :]
    if MASKED:
        kt = tl.load(kt_ptrs, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    elif EVEN_D:
        kt = tl.load(kt_ptrs)
        v = tl.load(v_ptrs)
    else:
        kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=v_dmask, other=0.0)
    if UPCAST:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    return kt, v, offs_n, k_ok


@triton.jit
def _key_mask(q_pos, q_doc, q_ok, kpos_base, kdoc_base, offs_n, k_ok, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """The element mask `[M, N]` of a masked tile, from the key block's positions and document ids."""
    k_pos, k_doc = _ids(kpos_base, kdoc_base, offs_n, k_ok, 2147483647, HAS_DOCS)
    return _mask(q_pos, k_pos, q_doc, k_doc, q_ok, k_ok, CAUSAL, HAS_DOCS)


@triton.jit
def _fwd_run(acc, l_i, m_i, q, q_pos, q_doc, q_ok, k_base, v_base, kpos_base, kdoc_base, lo, hi, sks, svs, SK,
             qk_scale, offs_d, d_ok,
             BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
             EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """Fold key blocks lo..hi-1 into the online softmax of one query block."""
    for j in range(lo, hi):
        kt, v, offs_n, k_ok = _kv_tiles(k_base, v_base, j * BLOCK_N, sks, svs, SK, offs_d, d_ok, BLOCK_N, MASKED,
                                        EVEN_D, UPCAST, False)
        s = tl.dot(q, kt) * qk_scale  # [M, N] base-2 logits
        if MASKED:
            s = tl.where(_key_mask(q_pos, q_doc, q_ok, kpos_base, kdoc_base, offs_n, k_ok, CAUSAL, HAS_DOCS), s,
                         float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = m_new
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


# --- forward ---------------------------------------------------------------------------------------


@triton.autotune(configs=_configs(FWD_SPACE), key=TUNE_KEY)
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, QPOS, KPOS, QDOC, KDOC, RANGES, COUNTS,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos, slb, slh,
    s_qpos_b, s_kpos_b, s_qdoc_b, s_kdoc_b, s_rb, s_cb, R,
    HQ, GROUPS, SQ, SK, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    hk = h // GROUPS
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_m < SQ
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    q_base = Q + b * sqb + h * sqh + start_m.to(tl.int64) * sqs
    tile_m = tl.arange(0, BLOCK_M)[:, None] * sqs + offs_d[None, :]
    q = tl.load(q_base + tile_m, mask=q_ok[:, None] & d_ok[None, :], other=0.0)  # [M, D]
    if UPCAST:
        q = q.to(tl.float32)
    q_pos, q_doc = _ids(QPOS + b * s_qpos_b, QDOC + b * s_qdoc_b, offs_m, q_ok, -1, HAS_DOCS)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    kpos_base = KPOS + b * s_kpos_b
    kdoc_base = KDOC + b * s_kdoc_b

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row, n_full, n_masked = _runs_of(RANGES, COUNTS, b, s_rb, s_cb, pid_m, R)
    for r in range(0, n_full):
        acc, l_i, m_i = _fwd_run(acc, l_i, m_i, q, q_pos, q_doc, q_ok, k_base, v_base, kpos_base, kdoc_base,
                                 tl.load(row + 2 * r), tl.load(row + 2 * r + 1), sks, svs, SK, qk_scale,
                                 offs_d, d_ok, BLOCK_N, False, CAUSAL, HAS_DOCS, EVEN_D, UPCAST)
    for r in range(n_full, n_full + n_masked):
        acc, l_i, m_i = _fwd_run(acc, l_i, m_i, q, q_pos, q_doc, q_ok, k_base, v_base, kpos_base, kdoc_base,
                                 tl.load(row + 2 * r), tl.load(row + 2 * r + 1), sks, svs, SK, qk_scale,
                                 offs_d, d_ok, BLOCK_N, True, CAUSAL, HAS_DOCS, EVEN_D, UPCAST)
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    o_base = O + b * sob + h * soh + start_m.to(tl.int64) * sos
    tl.store(o_base + tl.arange(0, BLOCK_M)[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])
    tl.store(LSE + b * slb + h * slh + offs_m, lse, mask=q_ok)


# --- backward --------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(O, DO, DELTA, sob, soh, sos, sdb, sdh, sds, HQ, SQ,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < SQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tile = tl.arange(0, BLOCK_M)[:, None]
    o = tl.load(O + b * sob + h * soh + start_m.to(tl.int64) * sos + tile * sos + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + start_m.to(tl.int64) * sds + tile * sds + offs_d[None, :], mask=ok,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * SQ + offs_m, delta, mask=offs_m < SQ)


@triton.jit
def _dkdv_run(dk, dv, kt_tile, v, k_pos, k_doc, k_ok, q_head, do_head, lse_head, delta_head, qpos_base, qdoc_base,
              lo, hi, sqs, sds, SQ, qk_scale, offs_d, d_ok,
              BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
              EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """Add the contributions of query blocks lo..hi-1 (one query head) to one key block's dK, dV.
    Works on Sᵀ `[N, M]`: kt_tile is K `[N, D]`, v is V `[N, D]`."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for i in range(lo, hi):
        start_m = i * BLOCK_M
        offs_m = start_m + offs_m0
        qt_ptrs = q_head + start_m.to(tl.int64) * sqs + offs_m0[None, :] * sqs + offs_d[:, None]  # [D, M]
        do_ptrs = do_head + start_m.to(tl.int64) * sds + offs_m0[:, None] * sds + offs_d[None, :]  # [M, D]
        if MASKED:
            q_ok = offs_m < SQ
            qt = tl.load(qt_ptrs, mask=q_ok[None, :] & d_ok[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=q_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(lse_head + offs_m, mask=q_ok, other=0.0)
            delta = tl.load(delta_head + offs_m, mask=q_ok, other=0.0)
        else:
            if EVEN_D:
                qt = tl.load(qt_ptrs)
                do = tl.load(do_ptrs)
            else:
                qt = tl.load(qt_ptrs, mask=d_ok[:, None], other=0.0)
                do = tl.load(do_ptrs, mask=d_ok[None, :], other=0.0)
            lse = tl.load(lse_head + offs_m)
            delta = tl.load(delta_head + offs_m)
        if UPCAST:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
        pt = tl.exp2(tl.dot(kt_tile, qt) * qk_scale - lse2[None, :])  # Pᵀ [N, M]
        if MASKED:
            q_pos, q_doc = _ids(qpos_base, qdoc_base, offs_m, q_ok, -1, HAS_DOCS)
            # the mask of Sᵀ: keys are rows here
            vis = k_ok[:, None] & q_ok[None, :]
            if CAUSAL:
                vis = vis & (q_pos[None, :] >= k_pos[:, None])
            if HAS_DOCS:
                vis = vis & (q_doc[None, :] == k_doc[:, None]) & (k_doc[:, None] >= 0)
            pt = tl.where(vis, pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv)
        dpt = tl.dot(v, tl.trans(do))  # dPᵀ [N, M]
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
    return dk, dv


@triton.autotune(configs=_configs(DKDV_SPACE), key=TUNE_KEY)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QPOS, KPOS, QDOC, KDOC, RANGES, COUNTS,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds, slb, slh,
    sdkb, sdkh, sdks, sdvb, sdvh, sdvs,
    s_qpos_b, s_kpos_b, s_qdoc_b, s_kdoc_b, s_rb, s_cb, R,
    HQ, HKV, GROUPS, SQ, SK, qk_scale, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // HKV).to(tl.int64)
    hk = (bhk % HKV).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ok = offs_n < SK
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    tile = k_ok[:, None] & d_ok[None, :]
    rows = tl.arange(0, BLOCK_N)[:, None]
    k = tl.load(K + b * skb + hk * skh + start_n.to(tl.int64) * sks + rows * sks + offs_d[None, :], mask=tile,
                other=0.0)  # [N, D]
    v = tl.load(V + b * svb + hk * svh + start_n.to(tl.int64) * svs + rows * svs + offs_d[None, :], mask=tile,
                other=0.0)  # [N, D]
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    k_pos, k_doc = _ids(KPOS + b * s_kpos_b, KDOC + b * s_kdoc_b, offs_n, k_ok, 2147483647, HAS_DOCS)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    row, n_full, n_masked = _runs_of(RANGES, COUNTS, b, s_rb, s_cb, pid_n, R)
    qpos_base = QPOS + b * s_qpos_b
    qdoc_base = QDOC + b * s_qdoc_b
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        q_head = Q + b * sqb + h * sqh
        do_head = DO + b * sdb + h * sdh
        lse_head = LSE + b * slb + h * slh
        delta_head = DELTA + (b * HQ + h) * SQ
        for r in range(0, n_full):
            dk, dv = _dkdv_run(dk, dv, k, v, k_pos, k_doc, k_ok, q_head, do_head, lse_head, delta_head, qpos_base,
                               qdoc_base, tl.load(row + 2 * r), tl.load(row + 2 * r + 1), sqs, sds, SQ, qk_scale,
                               offs_d, d_ok, BLOCK_M, False, CAUSAL, HAS_DOCS, EVEN_D, UPCAST)
        for r in range(n_full, n_full + n_masked):
            dk, dv = _dkdv_run(dk, dv, k, v, k_pos, k_doc, k_ok, q_head, do_head, lse_head, delta_head, qpos_base,
                               qdoc_base, tl.load(row + 2 * r), tl.load(row + 2 * r + 1), sqs, sds, SQ, qk_scale,
                               offs_d, d_ok, BLOCK_M, True, CAUSAL, HAS_DOCS, EVEN_D, UPCAST)
    dk = dk * softmax_scale
    tl.store(DK + b * sdkb + hk * sdkh + start_n.to(tl.int64) * sdks + rows * sdks + offs_d[None, :], dk, mask=tile)
    tl.store(DV + b * sdvb + hk * sdvh + start_n.to(tl.int64) * sdvs + rows * sdvs + offs_d[None, :], dv, mask=tile)


@triton.jit
def _dq_run(dq, q, do, lse2, delta, q_pos, q_doc, q_ok, k_base, v_base, kpos_base, kdoc_base, lo, hi, sks, svs, SK,
            qk_scale, offs_d, d_ok,
            BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
            EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """Add the contributions of key blocks lo..hi-1 to one query block's dQ."""
    for j in range(lo, hi):
        kt, vt, offs_n, k_ok = _kv_tiles(k_base, v_base, j * BLOCK_N, sks, svs, SK, offs_d, d_ok, BLOCK_N, MASKED,
                                         EVEN_D, UPCAST, True)
        p = tl.exp2(tl.dot(q, kt) * qk_scale - lse2[:, None])  # [M, N]
        if MASKED:
            p = tl.where(_key_mask(q_pos, q_doc, q_ok, kpos_base, kdoc_base, offs_n, k_ok, CAUSAL, HAS_DOCS), p, 0.0)
        dp = tl.dot(do, vt)  # [M, N]
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    return dq


@triton.autotune(configs=_configs(DQ_SPACE), key=TUNE_KEY)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, QPOS, KPOS, QDOC, KDOC, RANGES, COUNTS,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds, slb, slh, sdqb, sdqh, sdqs,
    s_qpos_b, s_kpos_b, s_qdoc_b, s_kdoc_b, s_rb, s_cb, R,
    HQ, GROUPS, SQ, SK, qk_scale, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    hk = h // GROUPS
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_m < SQ
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    tile = q_ok[:, None] & d_ok[None, :]
    rows = tl.arange(0, BLOCK_M)[:, None]
    q = tl.load(Q + b * sqb + h * sqh + start_m.to(tl.int64) * sqs + rows * sqs + offs_d[None, :], mask=tile,
                other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + start_m.to(tl.int64) * sds + rows * sds + offs_d[None, :], mask=tile,
                 other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + b * slb + h * slh + offs_m, mask=q_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
    delta = tl.load(DELTA + bh.to(tl.int64) * SQ + offs_m, mask=q_ok, other=0.0)
    q_pos, q_doc = _ids(QPOS + b * s_qpos_b, QDOC + b * s_qdoc_b, offs_m, q_ok, -1, HAS_DOCS)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    kpos_base = KPOS + b * s_kpos_b
    kdoc_base = KDOC + b * s_kdoc_b
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row, n_full, n_masked = _runs_of(RANGES, COUNTS, b, s_rb, s_cb, pid_m, R)
    for r in range(0, n_full):
        dq = _dq_run(dq, q, do, lse2, delta, q_pos, q_doc, q_ok, k_base, v_base, kpos_base, kdoc_base,
                     tl.load(row + 2 * r), tl.load(row + 2 * r + 1), sks, svs, SK, qk_scale, offs_d, d_ok,
                     BLOCK_N, False, CAUSAL, HAS_DOCS, EVEN_D, UPCAST)
    for r in range(n_full, n_full + n_masked):
        dq = _dq_run(dq, q, do, lse2, delta, q_pos, q_doc, q_ok, k_base, v_base, kpos_base, kdoc_base,
                     tl.load(row + 2 * r), tl.load(row + 2 * r + 1), sks, svs, SK, qk_scale, offs_d, d_ok,
                     BLOCK_N, True, CAUSAL, HAS_DOCS, EVEN_D, UPCAST)
    dq = dq * softmax_scale
    tl.store(DQ + b * sdqb + h * sdqh + start_m.to(tl.int64) * sdqs + rows * sdqs + offs_d[None, :], dq, mask=tile)


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


def _check_dtypes(**tensors: torch.Tensor) -> None:
    """q, k, v (and dout, out) must share one dtype: tl.dot takes two operands of the same type."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n}={str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise TypeError(f"flash attention needs one compute dtype, got {listed}; cast them to one (under autocast, "
                        f"the autocast dtype) before the call")


# Schedules of the last few position / document tensors: every layer of a model (and its backward) passes
# the same tensors, so the schedule is made once a step, not once a layer. An entry holds weak references
# and each tensor's version counter, so a freed, reused or modified tensor never hits.
_SCHEDULES: OrderedDict = OrderedDict()
_SCHEDULES_KEPT = 16


def _cached_plan(sources: tuple, key: tuple, make: Callable[[], tuple]) -> tuple:
    tensors = [t for t in sources if isinstance(t, torch.Tensor)]
    full_key = key + tuple((id(t), t._version) for t in tensors)
    hit = _SCHEDULES.get(full_key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[0], tensors)):
        _SCHEDULES.move_to_end(full_key)
        return hit[1]
    plan = make()
    _SCHEDULES[full_key] = ([weakref.ref(t) for t in tensors], plan)
    while len(_SCHEDULES) > _SCHEDULES_KEPT:
        _SCHEDULES.popitem(last=False)
    return plan


class _Ids:
    """Positions and document ids of both sides as int32 `[B, S]` views, and their per-block schedules."""

    def __init__(self, q, k, q_pos, k_pos, doc_q, doc_k, causal: bool) -> None:
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of K/V heads ({k.shape[1]})")
        if (doc_q is None) != (doc_k is None):
            raise ValueError("doc_q and doc_k must be given together")
        self.batch, self.sq, self.sk, self.causal = q.shape[0], q.shape[2], k.shape[2], causal
        self.sources = (q_pos, k_pos, doc_q, doc_k)
        self.qpos, s_qpos = _ints(q_pos, self.batch, self.sq, q.device)
        self.kpos, s_kpos = _ints(k_pos, self.batch, self.sk, q.device)
        self.has_docs = doc_q is not None
        self.qdoc, s_qdoc = _ints(doc_q, self.batch, self.sq, q.device) if self.has_docs else (self.qpos, 0)
        self.kdoc, s_kdoc = _ints(doc_k, self.batch, self.sk, q.device) if self.has_docs else (self.kpos, 0)
        self.strides = (s_qpos, s_kpos, s_qdoc, s_kdoc)

    def plan(self, rows: int, cols: int, keys_per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Schedule for tiles of `rows` x `cols` tokens (queries x keys, or keys x queries)."""
        key = (self.batch, self.sq, self.sk, rows, cols, keys_per_row, self.causal, self.has_docs,
               str(self.qpos.device))
        return _cached_plan(self.sources, key, lambda: self._plan(rows, cols, keys_per_row))

    def _plan(self, rows: int, cols: int, keys_per_row: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        qdoc = self.qdoc if self.has_docs else None
        kdoc = self.kdoc if self.has_docs else None
        q_rows, k_rows = (cols, rows) if keys_per_row else (rows, cols)
        qb = summarize(self.qpos.view(-1, self.sq), None if qdoc is None else qdoc.view(-1, self.sq), self.batch,
                       self.sq, q_rows)
        kb = summarize(self.kpos.view(-1, self.sk), None if kdoc is None else kdoc.view(-1, self.sk), self.batch,
                       self.sk, k_rows)
        ranges, counts = schedule(qb, kb, self.causal, keys_per_row)
        return ranges, counts, (ranges.stride(0), counts.stride(0), ranges.shape[2])

    def ints(self) -> tuple[torch.Tensor, ...]:
        return self.qpos, self.kpos, self.qdoc, self.kdoc


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _launch(kernel, grid, name: str, args: dict, consts: dict) -> None:
    for observe in LAUNCH_OBSERVERS:
        observe(name, args, consts)
    kernel[grid](*args.values(), **consts)


def triton_block_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float, causal: bool,
    q_pos=None, k_pos=None, doc_q=None, doc_k=None, out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of one block: (out `[B, Hq, Sq, D]` in q's dtype or `out_dtype`, lse fp32 `[B, Hq, Sq]`)."""
    _check_dtypes(q=q, k=k, v=v)
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    ids = _Ids(q, k, q_pos, k_pos, doc_q, doc_k, causal)
    block_m, block_n = blocks(d)["fwd"]
    ranges, counts, plan = ids.plan(block_m, block_n)
    out = torch.empty(q.shape, dtype=out_dtype or q.dtype, device=q.device)
    lse = torch.empty((b, hq, sq), device=q.device, dtype=torch.float32)
    args = dict(
        Q=q, K=k, V=v, O=out, LSE=lse, QPOS=ids.qpos, KPOS=ids.kpos, QDOC=ids.qdoc, KDOC=ids.kdoc, RANGES=ranges,
        COUNTS=counts, sqb=q.stride(0), sqh=q.stride(1), sqs=q.stride(2), skb=k.stride(0), skh=k.stride(1),
        sks=k.stride(2), svb=v.stride(0), svh=v.stride(1), svs=v.stride(2), sob=out.stride(0), soh=out.stride(1),
        sos=out.stride(2), slb=lse.stride(0), slh=lse.stride(1), s_qpos_b=ids.strides[0], s_kpos_b=ids.strides[1],
        s_qdoc_b=ids.strides[2], s_kdoc_b=ids.strides[3], s_rb=plan[0], s_cb=plan[1], R=plan[2],
        HQ=hq, GROUPS=hq // hkv, SQ=sq, SK=sk, qk_scale=softmax_scale * LOG2E,
    )
    consts = dict(HEAD_DIM=d, BLOCK_D=_block_d(d), BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                  HAS_DOCS=ids.has_docs, UPCAST=INTERPRET)
    _launch(_fwd_kernel, (triton.cdiv(sq, block_m), b * hq), "_fwd_kernel", args, consts)
    return out, lse


def triton_block_attn_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    *, softmax_scale: float, causal: bool, q_pos=None, k_pos=None, doc_q=None, doc_k=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of one block from the row's (global) out and lse: fp32 (dq, dk, dv)."""
    _check_dtypes(q=q, k=k, v=v, dout=dout)
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    q, k, v, out, dout = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, out, dout))
    lse = lse.float().contiguous()
    ids = _Ids(q, k, q_pos, k_pos, doc_q, doc_k, causal)
    block_d = _block_d(d)
    delta = torch.empty((b, hq, sq), device=q.device, dtype=torch.float32)
    _delta_kernel[(triton.cdiv(sq, 64), b * hq)](
        out, dout, delta, out.stride(0), out.stride(1), out.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2), hq, sq, HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=64,
    )
    dq = torch.empty((b, hq, sq, d), device=q.device, dtype=torch.float32)
    dk = torch.empty((b, hkv, sk, d), device=q.device, dtype=torch.float32)
    dv = torch.empty((b, hkv, sk, d), device=q.device, dtype=torch.float32)
    common = dict(
        sqb=q.stride(0), sqh=q.stride(1), sqs=q.stride(2), skb=k.stride(0), skh=k.stride(1), sks=k.stride(2),
        svb=v.stride(0), svh=v.stride(1), svs=v.stride(2), sdb=dout.stride(0), sdh=dout.stride(1),
        sds=dout.stride(2), slb=lse.stride(0), slh=lse.stride(1),
    )
    id_strides = dict(s_qpos_b=ids.strides[0], s_kpos_b=ids.strides[1], s_qdoc_b=ids.strides[2],
                      s_kdoc_b=ids.strides[3])
    qpos, kpos, qdoc, kdoc = ids.ints()
    scale2 = softmax_scale * LOG2E
    size = blocks(d)

    block_n, block_m = size["dkdv"]
    ranges, counts, plan = ids.plan(block_n, block_m, keys_per_row=True)
    args = dict(Q=q, K=k, V=v, DO=dout, LSE=lse, DELTA=delta, DK=dk, DV=dv, QPOS=qpos, KPOS=kpos, QDOC=qdoc,
                KDOC=kdoc, RANGES=ranges, COUNTS=counts, **common, sdkb=dk.stride(0), sdkh=dk.stride(1),
                sdks=dk.stride(2), sdvb=dv.stride(0), sdvh=dv.stride(1), sdvs=dv.stride(2), **id_strides,
                s_rb=plan[0], s_cb=plan[1], R=plan[2], HQ=hq, HKV=hkv, GROUPS=hq // hkv, SQ=sq, SK=sk,
                qk_scale=scale2, softmax_scale=softmax_scale)
    consts = dict(HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                  HAS_DOCS=ids.has_docs, UPCAST=INTERPRET)
    _launch(_bwd_dkdv_kernel, (triton.cdiv(sk, block_n), b * hkv), "_bwd_dkdv_kernel", args, consts)

    block_m, block_n = size["dq"]
    ranges, counts, plan = ids.plan(block_m, block_n)
    args = dict(Q=q, K=k, V=v, DO=dout, LSE=lse, DELTA=delta, DQ=dq, QPOS=qpos, KPOS=kpos, QDOC=qdoc, KDOC=kdoc,
                RANGES=ranges, COUNTS=counts, **common, sdqb=dq.stride(0), sdqh=dq.stride(1), sdqs=dq.stride(2),
                **id_strides, s_rb=plan[0], s_cb=plan[1], R=plan[2], HQ=hq, GROUPS=hq // hkv, SQ=sq, SK=sk,
                qk_scale=scale2, softmax_scale=softmax_scale)
    consts = dict(consts, BLOCK_M=block_m, BLOCK_N=block_n)
    _launch(_bwd_dq_kernel, (triton.cdiv(sq, block_m), b * hq), "_bwd_dq_kernel", args, consts)
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
        dq, dk, dv = triton_block_attn_backward(dout.to(q.dtype), q, k, v, out, lse, **ctx.settings)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def flash_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float | None = None,
    causal: bool = False, q_pos=None, k_pos=None, doc_q=None, doc_k=None, return_lse: bool = False,
):
    """Differentiable flash attention. q `[B, Hq, Sq, D]`, k/v `[B, Hkv, Sk, D]` (GQA: Hq % Hkv == 0), one dtype.

    `softmax_scale` defaults to 1/sqrt(D). Positions (`[S]` or `[B, S]`, default 0..S-1) decide the
    causal mask; document ids (`[S]` or `[B, S]`) keep packed sequences apart (negative: padding, seen
    by nothing). Returns out `[B, Hq, Sq, D]`, and the fp32 log-sum-exp `[B, Hq, Sq]` when `return_lse`.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, lse = _FlashAttnFunc.apply(q, k, v, scale, causal, q_pos, k_pos, doc_q, doc_k)
    return (out, lse) if return_lse else out
