"""Ring attention over a torch.distributed process group (context parallelism).

Each of the W ranks holds a shard of the sequence: its queries, keys and values, with the *global*
positions and document ids of those tokens. Forward: W steps; at each, the current K/V block (with
its positions and document ids; only the K/V heads, never repeated for GQA) is sent to the next
rank and the previous rank's received, with `batch_isend_irecv`, while the block function computes
on the current one; the partial (out, lse) are merged in fp32 with the log-sum-exp. Backward: K/V
rotate again; each block's gradients use the row's global out and lse; the dK/dV accumulators
(fp32) travel the ring one step behind the K/V, their transfer overlapped with the next block's
compute, and a last hop brings each back to its owner.

Layouts (`shard_positions`): "zigzag" cuts the sequence into 2W chunks and gives rank r chunks r and
2W-1-r, which balances causal work; "contiguous" gives rank r the r-th of W equal pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from kernels.reference import block_attn, block_attn_backward

BlockFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
BlockBwdFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def shard_positions(seq_len: int, world: int, rank: int, layout: str = "zigzag") -> torch.Tensor:
    """Global token positions held by `rank` (ascending), `[seq_len / world]`."""
    if layout == "zigzag":
        if seq_len % (2 * world):
            raise ValueError(f"zigzag needs seq_len={seq_len} divisible by 2 x world={2 * world}")
        chunk = seq_len // (2 * world)
        first = torch.arange(rank * chunk, (rank + 1) * chunk)
        second = torch.arange((2 * world - 1 - rank) * chunk, (2 * world - rank) * chunk)
        return torch.cat([first, second])
    if layout == "contiguous":
        if seq_len % world:
            raise ValueError(f"contiguous needs seq_len={seq_len} divisible by world={world}")
        piece = seq_len // world
        return torch.arange(rank * piece, (rank + 1) * piece)
    raise ValueError(f"layout must be 'zigzag' or 'contiguous', not {layout!r}")


def causal_work(seq_len: int, world: int, layout: str = "zigzag") -> list[int]:
    """Visible (query, key) pairs each rank computes under a causal mask, for a layout."""
    return [int((shard_positions(seq_len, world, r, layout) + 1).sum()) for r in range(world)]


class RingComm:
    """Sends tensors to the next rank of the group and receives from the previous, asynchronously.
    Counts the bytes it sends (tests check that only K/V heads travel)."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        if group is None and not dist.is_initialized():  # one process, no ring: world size 1
            self.world, self.next, self.prev, self.bytes_sent = 1, 0, 0, 0
            return
        self.world = dist.get_world_size(group)
        rank = dist.get_rank(group)

        def global_rank(r: int) -> int:
            return dist.get_global_rank(group, r % self.world) if group is not None else r % self.world

        self.next, self.prev = global_rank(rank + 1), global_rank(rank - 1)
        self.bytes_sent = 0

    def start(self, tensors: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
        """Begin sending `tensors` to the next rank and receiving same-shaped ones from the previous."""
        received = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, r, self.prev, self.group) for r in received]
        self.bytes_sent += sum(t.numel() * t.element_size() for t in tensors)
        return dist.batch_isend_irecv(ops), received

    @staticmethod
    def wait(pending: tuple[list, list[torch.Tensor]]) -> list[torch.Tensor]:
        """Finish a transfer; the received tensors."""
        requests, received = pending
        for request in requests:
            request.wait()
        return received


def merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a block's (out, lse) into the running fp32 (out `[B, H, S, D]`, lse `[B, H, S]`), in place."""
    new = torch.logaddexp(lse, block_lse)
    safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)  # rows that saw nothing yet
    out.mul_(torch.exp(lse - safe).unsqueeze(-1))
    out.add_(block_out.to(out.dtype) * torch.exp(block_lse - safe).unsqueeze(-1))
    lse.copy_(new)


class _RingAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, fwd, bwd, softmax_scale, causal, q_pos, k_pos, doc_q, doc_k, comm):
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        b, h, s, d = q.shape
        out = torch.zeros(b, h, s, d, dtype=acc_dtype, device=q.device)
        lse = torch.full((b, h, s), float("-inf"), dtype=acc_dtype, device=q.device)
        block = [k, v, k_pos, doc_k] if doc_k is not None else [k, v, k_pos]
        for step in range(comm.world):
            pending = comm.start(block) if step < comm.world - 1 else None
            kk, vv, kp = block[:3]
            dk_ids = block[3] if doc_k is not None else None
            o, l = fwd(q, kk, vv, softmax_scale=softmax_scale, causal=causal, q_pos=q_pos, k_pos=kp,
                       doc_q=doc_q, doc_k=dk_ids)
            merge(out, lse, o, l)
            if pending is not None:
                block = comm.wait(pending)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, q_pos, k_pos, *([doc_q, doc_k] if doc_k is not None else []))
        ctx.settings = (bwd, softmax_scale, causal, doc_k is not None, comm)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        bwd, softmax_scale, causal, has_docs, comm = ctx.settings
        q, k, v, out, lse, q_pos, k_pos, *docs = ctx.saved_tensors
        doc_q, doc_k = docs if has_docs else (None, None)
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        block = [k, v, k_pos, doc_k] if has_docs else [k, v, k_pos]
        dkv_pending = None
        for step in range(comm.world):
            kv_pending = comm.start(block) if step < comm.world - 1 else None
            kk, vv, kp = block[:3]
            dq_b, dk_b, dv_b = bwd(dout, q, kk, vv, out, lse, softmax_scale=softmax_scale, causal=causal,
                                   q_pos=q_pos, k_pos=kp, doc_q=doc_q, doc_k=block[3] if has_docs else None)
            dq += dq_b
            if dkv_pending is None:  # the accumulators of this block start here
                dk_acc, dv_acc = dk_b.to(acc_dtype), dv_b.to(acc_dtype)
            else:  # they arrived from the previous rank while this block computed
                dk_acc, dv_acc = comm.wait(dkv_pending)
                dk_acc += dk_b
                dv_acc += dv_b
            dkv_pending = comm.start([dk_acc, dv_acc]) if comm.world > 1 else None
            if kv_pending is not None:
                block = comm.wait(kv_pending)
        if dkv_pending is not None:  # the last hop brings each block's gradients home
            dk_acc, dv_acc = comm.wait(dkv_pending)
        return (dq.to(q.dtype), dk_acc.to(k.dtype), dv_acc.to(v.dtype), *(None,) * 9)


def ring_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup | None = None, *,
    positions: torch.Tensor, causal: bool = True, softmax_scale: float | None = None,
    doc_ids: torch.Tensor | None = None, block_attn_fn: BlockFn = block_attn,
    block_attn_backward_fn: BlockBwdFn = block_attn_backward, return_lse: bool = False,
    comm: RingComm | None = None,
):
    """Attention of this rank's queries over the whole sequence held across `group`.

    q `[B, Hq, S_local, D]`, k/v `[B, Hkv, S_local, D]`; `positions` (`[S_local]` or `[B, S_local]`)
    are the global positions of the local tokens (see `shard_positions`) and `doc_ids` their document
    ids for packed sequences. The block functions default to the torch reference (CPU); pass
    `kernels.triton_block_attn` and `kernels.triton_block_attn_backward` on GPU.
    Returns out `[B, Hq, S_local, D]` (and the global lse when `return_lse`).
    """
    comm = comm or RingComm(group)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    positions = positions.to(q.device)
    docs = doc_ids.to(q.device) if doc_ids is not None else None
    out, lse = _RingAttnFunc.apply(q, k, v, block_attn_fn, block_attn_backward_fn, scale, causal,
                                   positions, positions, docs, docs, comm)
    return (out, lse) if return_lse else out
