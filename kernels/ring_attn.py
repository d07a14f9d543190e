"""Ring attention over a torch.distributed process group (context parallelism).

Each of the W ranks holds a shard of the sequence: its queries, keys and values, with the *global*
positions and document ids of those tokens. Forward: W steps; at each, the current K/V block (with
its positions and document ids; only the K/V heads, never repeated for GQA) is sent to the next
rank and the previous rank's received, with `batch_isend_irecv`, while the block function computes
on the current one; the partial (out, lse) come back in fp32 (`out_dtype`) and are merged in fp32 with
the log-sum-exp, so nothing is rounded to bf16 before the last hop. Backward: K/V
rotate again; each block's gradients use the row's global out and lse; the dK/dV accumulators
(fp32) travel the ring one step behind the K/V, their transfer overlapped with the next block's
compute, and a last hop brings each back to its owner.

Layouts (`shard_positions`): "zigzag" cuts the sequence into 2W chunks and gives rank r chunks r and
2W-1-r, which balances causal work; "contiguous" gives rank r the r-th of W equal pieces.
Packed rows with padding (which does no work) are balanced per row by `balanced_shards` (chunks of a
kernel block dealt by their work); `attention_work` counts what each rank computes under a layout.
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


def snake_rank(chunk: int, world: int) -> int:
    """The rank that holds `chunk` in snake order: 0..W-1, W-1..0, 0..W-1, ... (the zigzag is two passes)."""
    turn, at = divmod(chunk, world)
    return at if turn % 2 == 0 else world - 1 - at


def balanced_positions(valid_len: int, seq_len: int, world: int, rank: int, block: int = 128, rounds: int = 1,
                       ) -> torch.Tensor:
    """Global positions held by `rank` under the padding-aware zigzag, `[seq_len / world]` ascending.

    The row's valid prefix of `valid_len` tokens is cut into 2·W·`rounds` equal chunks of c tokens,
    c = ceil(valid_len / (2·W·rounds)) rounded up to `block` (the kernel's query block); chunk i goes to
    `snake_rank(i, W)` (rounds=1: rank r takes chunks r and 2W-1-r). Each rank fills its remaining
    S/W - 2·rounds·c slots with its own contiguous slice of the padding tail. Fewer rounds are tried when
    the chunks do not fit in the row, and the plain zigzag (`shard_positions`) when none do.
    This balances one document followed by padding; packed rows of several documents need
    `balanced_shards`, which balances by each chunk's work (benchmarks/ring_balance.py measures both).
    """
    if seq_len % world or not 0 <= valid_len <= seq_len:
        raise ValueError(f"need seq_len={seq_len} divisible by world={world} and 0 <= valid_len={valid_len} <= it")
    for k in range(rounds, 0, -1):
        chunk = -(-valid_len // (2 * world * k))  # ceil(V / 2Wk), then up to whole blocks
        chunk = -(-chunk // block) * block
        if 2 * world * k * chunk <= seq_len:
            break
    else:
        return shard_positions(seq_len, world, rank, "zigzag")
    starts = [i * chunk for i in range(2 * world * k) if snake_rank(i, world) == rank]
    pad = seq_len // world - 2 * k * chunk
    tail = 2 * world * k * chunk + rank * pad
    return torch.cat([torch.arange(s, s + chunk) for s in starts] + [torch.arange(tail, tail + pad)])


def token_work(doc_ids: torch.Tensor) -> torch.Tensor:
    """Visible keys of each query of one packed row `[S]` (positions 0..S-1) under the causal mask: how
    many tokens of its document are at or before it; 0 for padding (negative id)."""
    doc = doc_ids.long()
    order = torch.argsort(doc, stable=True)  # grouped by document, positions ascending within each
    grouped = doc[order]
    idx = torch.arange(doc.numel(), device=doc.device)
    first = torch.ones_like(grouped, dtype=torch.bool)
    first[1:] = grouped[1:] != grouped[:-1]
    seen = idx - torch.cummax(torch.where(first, idx, 0), 0).values + 1
    work = torch.empty_like(seen)
    work[order] = seen
    return torch.where(doc >= 0, work, 0)


def tile_work(doc_ids: torch.Tensor, block_q: int = 128, block_k: int = 64) -> torch.Tensor:
    """Key tiles the kernel visits for each query chunk of one packed row `[S]`, `[S / block_q]`.

    Key tiles are the aligned `block_k` ranges of positions (what every layout made of whole `block_q`
    chunks gives); a chunk visits the tiles from its documents' starts to its own tokens, causally.
    Exact for documents that are contiguous runs of the row (as packing makes them); padding visits none.
    """
    doc = doc_ids.long()
    n = doc.numel()
    idx = torch.arange(n, device=doc.device)
    new_doc = torch.ones(n, dtype=torch.bool, device=doc.device)
    new_doc[1:] = doc[1:] != doc[:-1]
    doc_start = torch.cummax(torch.where(new_doc, idx, 0), 0).values
    # a run: one document's tokens within one chunk; it visits key tiles doc_start // bk .. last // bk
    first = (new_doc | (idx % block_q == 0)).nonzero().flatten()
    last = torch.cat([first[1:] - 1, first.new_tensor([n - 1])])
    lo, hi, real = doc_start[first] // block_k, last // block_k, doc[first] >= 0
    tiles = (hi - lo + 1) * real
    # the previous run of the chunk (another document) may end in the tile where this one's starts
    shared = torch.zeros_like(real)
    shared[1:] = (first[1:] // block_q == first[:-1] // block_q) & real[:-1] & real[1:] & (lo[1:] == hi[:-1])
    out = torch.zeros(-(-n // block_q), dtype=torch.long, device=doc.device)
    return out.index_add_(0, first // block_q, tiles - shared.long())


def balanced_shards(doc_ids: torch.Tensor, world: int, block: int = 128, block_k: int = 64) -> list[torch.Tensor]:
    """Every rank's global positions under the work-balanced layout of one packed row `[S]`: W `[S / W]`.

    The row up to its last real token is cut into chunks of `block` tokens (the kernel's query block, so no
    tile straddles two chunks). Each chunk costs its visible (query, key) pairs (`token_work`) and its
    visited key tiles (`tile_work`, what the kernel pays); chunks are dealt heaviest first, each to the rank
    (with room left) whose larger share — of the row's pairs or of its tiles — stays smallest with it, so
    both balance. The remaining slots of each rank are its own contiguous slice of the padding tail. A
    rank's positions are its chunks in ascending order, then that slice. Integer arithmetic throughout, so
    every rank of a group computes the same split. Padding and documents do no work across each other: the
    plain zigzag (`shard_positions`) balances one causal document over the whole row, which a packed,
    padded row is not. A row that cannot be cut into W x whole blocks gets the plain zigzag.
    """
    seq_len = doc_ids.numel()
    if seq_len % (world * block):
        return [shard_positions(seq_len, world, r, "zigzag").to(doc_ids.device) for r in range(world)]
    real = (doc_ids >= 0).nonzero()
    n_real = -(-(int(real[-1]) + 1) // block) if real.numel() else 0  # chunks up to the last real token
    pairs = token_work(doc_ids).view(-1, block).sum(-1)[:n_real].tolist()
    tiles = tile_work(doc_ids, block, block_k)[:n_real].tolist()
    total_pairs, total_tiles = max(1, sum(pairs)), max(1, sum(tiles))
    slots = seq_len // (world * block)
    load_pairs, load_tiles, mine = [0] * world, [0] * world, [[] for _ in range(world)]
    # shares compared as pairs/total_pairs vs tiles/total_tiles, cross-multiplied to stay integers
    for i in sorted(range(n_real), key=lambda i: (-(pairs[i] * total_tiles + tiles[i] * total_pairs), i)):
        best, rank = None, 0
        for r in range(world):
            if len(mine[r]) < slots:
                share = max((load_pairs[r] + pairs[i]) * total_tiles, (load_tiles[r] + tiles[i]) * total_pairs)
                if best is None or share < best:
                    best, rank = share, r
        mine[rank].append(i)
        load_pairs[rank] += pairs[i]
        load_tiles[rank] += tiles[i]
    offsets = torch.arange(block, device=doc_ids.device)
    shards, pad_from = [], n_real
    for r in range(world):
        pad = slots - len(mine[r])
        chunks = torch.tensor(sorted(mine[r]) + list(range(pad_from, pad_from + pad)), dtype=torch.long,
                              device=doc_ids.device)
        shards.append((chunks[:, None] * block + offsets).flatten())
        pad_from += pad
    return shards


def _tiles(pos: torch.Tensor, doc: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[n, size]` positions and document ids of one shard cut into tiles; the last tile is padded with
    invisible tokens (document id -1)."""
    extra = -(-pos.numel() // size) * size - pos.numel()
    pos = torch.cat([pos, pos.new_zeros(extra)]).view(-1, size)
    doc = torch.cat([doc, doc.new_full((extra,), -1)]).view(-1, size)
    return pos, doc


def _summary(pos: torch.Tensor, doc: torch.Tensor) -> dict[str, torch.Tensor]:
    valid = doc >= 0
    big = torch.iinfo(torch.long).max
    return {"any": valid.any(-1), "all": valid.all(-1),
            "pmin": torch.where(valid, pos, big).amin(-1), "pmax": torch.where(valid, pos, -big).amax(-1),
            "dmin": torch.where(valid, doc, big).amin(-1), "dmax": torch.where(valid, doc, -big).amax(-1)}


def attention_work(shards: list[torch.Tensor], doc_ids: torch.Tensor, *, causal: bool = True, block_q: int = 128,
                   block_k: int = 64, tiles_per_pass: int = 1 << 22) -> tuple[list[int], list[int]]:
    """What each rank of a ring computes: (visible (query, key) pairs, visited `block_q x block_k` tiles) per rank,
    summed over the batch's rows.

    `shards[r]` are rank r's global positions, `[S_local]` or `[B, S_local]` (per row); `doc_ids` `[S]` or
    `[B, S]` the full rows' document ids (negative: padding). Rank r's queries meet every rank's keys; the
    kernel tiles its queries by `block_q` and each K/V shard by `block_k` in the shard's own order, and
    visits a tile when any pair in it is visible (`kernels.reference.visibility`). Tiles whose summaries
    prove them empty or fully visible are counted without building their mask, so a 1M-token row is cheap.
    """
    from kernels.reference import visibility

    docs = doc_ids if doc_ids.dim() == 2 else doc_ids[None]
    shards = [s.expand(docs.shape[0], -1) if s.dim() == 1 else s for s in shards]
    tokens, tiles = [0] * len(shards), [0] * len(shards)
    for b in range(docs.shape[0]):
        row = docs[b].long()
        keys = [_tiles(s[b].long(), row[s[b]], block_k) for s in shards]
        kpos, kdoc = torch.cat([k[0] for k in keys]), torch.cat([k[1] for k in keys])
        ks = _summary(kpos, kdoc)
        for r, s in enumerate(shards):
            qpos, qdoc = _tiles(s[b].long(), row[s[b]], block_q)
            step = max(1, tiles_per_pass // kpos.shape[0])
            for lo in range(0, qpos.shape[0], step):
                qp, qd = qpos[lo:lo + step], qdoc[lo:lo + step]
                qs = _summary(qp, qd)
                may = qs["any"][:, None] & ks["any"][None]
                may &= (ks["dmin"][None] <= qs["dmax"][:, None]) & (ks["dmax"][None] >= qs["dmin"][:, None])
                full = may & qs["all"][:, None] & ks["all"][None] & (qs["dmin"] == qs["dmax"])[:, None]
                full &= (ks["dmin"] == ks["dmax"])[None] & (qs["dmin"][:, None] == ks["dmin"][None])
                if causal:
                    may &= ks["pmin"][None] <= qs["pmax"][:, None]
                    full &= ks["pmax"][None] <= qs["pmin"][:, None]
                n_full = int(full.sum())
                tokens[r] += n_full * block_q * block_k
                tiles[r] += n_full
                i, j = (may & ~full).nonzero(as_tuple=True)  # masked tiles: count their pairs
                per = max(1, tiles_per_pass // (block_q * block_k))
                for m in range(0, i.numel(), per):
                    ii, jj = i[m:m + per], j[m:m + per]
                    seen = visibility(ii.numel(), block_q, block_k, causal, qp[ii], kpos[jj], qd[ii], kdoc[jj])
                    count = seen.flatten(1).sum(-1)
                    tokens[r] += int(count.sum())
                    tiles[r] += int((count > 0).sum())
    return tokens, tiles


def imbalance(work: list[int]) -> float:
    """max / mean of per-rank work (1.0: balanced, and when there is no work)."""
    total = sum(work)
    return max(work) * len(work) / total if total else 1.0


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
            # the partial stays fp32 until merged: rounding it to q's dtype each hop is the ring's drift
            o, l = fwd(q, kk, vv, softmax_scale=softmax_scale, causal=causal, q_pos=q_pos, k_pos=kp,
                       doc_q=doc_q, doc_k=dk_ids, out_dtype=acc_dtype)
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
