"""Torch reference of the block attention contract: the oracle for tests and the block function on CPU.

    block_attn(q, k, v, *, softmax_scale, causal, q_pos=None, k_pos=None, doc_q=None, doc_k=None,
               out_dtype=None) -> (out, lse)
    block_attn_backward(dout, q, k, v, out, lse, *, same keywords) -> (dq, dk, dv)

q `[B, Hq, Sq, D]`, k/v `[B, Hkv, Sk, D]` with Hq a multiple of Hkv (GQA, heads not repeated by the
caller). Query i may see key j when (not causal or q_pos[i] >= k_pos[j]) and doc_q[i] == doc_k[j] >= 0: a
negative document id is padding, which sees nothing and is seen by nothing.
Positions and document ids are `[S]` or `[B, S]` integers; positions default to 0..S-1 (so a
causal block at an offset passes its global positions). Everything is computed in fp32 (fp64 inputs stay fp64); `lse` is
the natural log-sum-exp of the scaled scores `[B, Hq, Sq]`, -inf for a row that sees no key (its
output is zero). The backward takes the row's *global* out and lse, so a ring can call it per block;
it returns fp32 gradients, dk/dv summed over each K/V head's query group.
"""

from __future__ import annotations

import torch


def _per_batch(x: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    if x is None:
        x = torch.arange(length, device=device)
    return x.expand(batch, length) if x.dim() == 1 else x


def visibility(
    batch: int, sq: int, sk: int, causal: bool, q_pos=None, k_pos=None, doc_q=None, doc_k=None, device=None
) -> torch.Tensor:
    """Boolean `[B, 1, Sq, Sk]`: which keys each query may attend to."""
    mask = torch.ones(batch, sq, sk, dtype=torch.bool, device=device)
    if causal:
        qp = _per_batch(q_pos, batch, sq, device)
        kp = _per_batch(k_pos, batch, sk, device)
        mask &= qp[:, :, None] >= kp[:, None, :]
    if doc_q is not None or doc_k is not None:
        if doc_q is None or doc_k is None:
            raise ValueError("doc_q and doc_k must be given together")
        dq = _per_batch(doc_q, batch, sq, device)
        dk = _per_batch(doc_k, batch, sk, device)
        mask &= (dq[:, :, None] == dk[:, None, :]) & (dk[:, None, :] >= 0)  # padding (< 0) sees nothing
    return mask[:, None]


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)  # [B, Hkv, S, D] -> [B, Hq, S, D]


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _probs(q, k, lse, mask, softmax_scale):
    scores = (q @ k.transpose(-1, -2)).mul_(softmax_scale)  # [B, Hq, Sq, Sk] fp32, worked on in place
    safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return scores.sub_(safe_lse[..., None]).exp_().masked_fill_(~mask, 0.0)


def block_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float, causal: bool,
    q_pos=None, k_pos=None, doc_q=None, doc_k=None, out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over one K/V block: (out `[B, Hq, Sq, D]` in q's dtype or `out_dtype`, lse fp32 `[B, Hq, Sq]`)."""
    b, hq, sq, _ = q.shape
    groups = hq // k.shape[1]
    qf, kf, vf = _acc(q), _expand_kv(_acc(k), groups), _expand_kv(_acc(v), groups)
    mask = visibility(b, sq, k.shape[2], causal, q_pos, k_pos, doc_q, doc_k, q.device)
    scores = (qf @ kf.transpose(-1, -2)).mul_(softmax_scale).masked_fill_(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf where a row sees nothing
    safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = scores.sub_(safe_lse[..., None]).exp_()  # masked scores are -inf: exp gives 0; in place (big on CPU)
    return (probs @ vf).to(out_dtype or q.dtype), lse


def block_attn_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    *, softmax_scale: float, causal: bool, q_pos=None, k_pos=None, doc_q=None, doc_k=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of one block given the row's global out and lse: fp32 (dq, dk, dv)."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    groups = hq // hkv
    qf, kf, vf = _acc(q), _expand_kv(_acc(k), groups), _expand_kv(_acc(v), groups)
    do, o = _acc(dout), _acc(out)
    mask = visibility(b, sq, sk, causal, q_pos, k_pos, doc_q, doc_k, q.device)
    probs = _probs(qf, kf, _acc(lse), mask, softmax_scale)  # [B, Hq, Sq, Sk]
    delta = (do * o).sum(-1, keepdim=True)  # [B, Hq, Sq, 1]
    dscores = (do @ vf.transpose(-1, -2)).sub_(delta).mul_(probs)
    dq = (dscores @ kf) * softmax_scale
    dk = (dscores.transpose(-1, -2) @ qf) * softmax_scale  # [B, Hq, Sk, D]
    dv = probs.transpose(-1, -2) @ do
    dk = dk.view(b, hkv, groups, sk, d).sum(2)
    dv = dv.view(b, hkv, groups, sk, d).sum(2)
    return dq, dk, dv
