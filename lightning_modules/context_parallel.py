"""The one place a batch is split along the sequence for the context-parallel group, and put back.

Every rank of a context-parallel group receives the same packed batch. `shard_batch` shifts the
labels first (so the label of a token stays with it, whichever rank holds it), masks the labels that
would cross a document boundary, and keeps each rank's share of the tokens together with their
*global* positions (RoPE and the causal mask use them) and document ids (the ring's document mask).
With world size 1 it still shifts, so one loss code path serves every run.

Layouts (`layout_positions`): "zigzag" balances each row's real attention work over the ranks
(`kernels.ring_attn.balanced_shards`: chunks of a kernel block dealt by their work, padding left over to
fill each rank's slots), so positions differ per row, `[B, S_local]`; "contiguous" gives rank r the r-th
of W equal pieces of every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from kernels.ring_attn import balanced_shards, shard_positions

IGNORE_INDEX = -100
KERNEL_BLOCK = 128  # the kernels' query block: "zigzag" deals whole blocks, so no tile straddles two chunks


@dataclass
class ShardedBatch:
    """One rank's share of a packed batch; every tensor is `[B, S_local]`."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # already shifted: labels[t] is the token that should follow input_ids[t]
    position_ids: torch.Tensor  # global positions in the packed sequence (per row: the layout depends on the row)
    doc_ids: torch.Tensor
    response: torch.Tensor | None = None  # shifted like the labels: labels[t] belongs to an assistant turn


def shift_labels(labels: torch.Tensor, doc_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`[B, S]` labels moved one step left; the last token's and those whose next token starts
    another document become `ignore_index`."""
    shifted = torch.full_like(labels, ignore_index)
    shifted[:, :-1] = labels[:, 1:]
    shifted[:, :-1][doc_ids[:, 1:] != doc_ids[:, :-1]] = ignore_index
    return shifted


def layout_positions(doc_ids: torch.Tensor, world: int, rank: int, layout: str = "zigzag",
                     block: int = KERNEL_BLOCK) -> torch.Tensor:
    """Global positions `[B, S / world]` of each row's tokens that `rank` holds (ascending within a row)."""
    b, s = doc_ids.shape
    if layout == "contiguous" or world == 1:
        return shard_positions(s, world, rank, "contiguous").to(doc_ids.device).expand(b, -1).contiguous()
    if layout != "zigzag":
        raise ValueError(f"layout must be 'zigzag' or 'contiguous', not {layout!r}")
    return torch.stack([balanced_shards(row, world, block)[rank] for row in doc_ids])


def shard_batch(input_ids: torch.Tensor, labels: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                *, world: int = 1, rank: int = 0, layout: str = "zigzag", ignore_index: int = IGNORE_INDEX,
                response: torch.Tensor | None = None) -> ShardedBatch:
    """This rank's share of a packed batch `[B, S]` (labels default to the inputs, documents to one; the
    optional bool `response` marks assistant tokens and moves with the labels)."""
    labels = input_ids if labels is None else labels
    doc_ids = torch.zeros_like(input_ids) if doc_ids is None else doc_ids
    shifted = shift_labels(labels, doc_ids, ignore_index)
    pos = layout_positions(doc_ids, world, rank, layout).to(input_ids.device)
    if response is not None:
        response = shift_labels(response.long(), doc_ids, 0).gather(1, pos).bool()
    return ShardedBatch(input_ids=input_ids.gather(1, pos), labels=shifted.gather(1, pos), position_ids=pos,
                        doc_ids=doc_ids.gather(1, pos), response=response)


def gather_sequence(local: torch.Tensor, group: dist.ProcessGroup | None = None, *,
                    positions: torch.Tensor | None = None, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """Put the shards of a tensor (each rank's `local`, sharded along `dim`) back in sequence order.

    `positions` are this rank's global positions (`ShardedBatch.position_ids`, `[B, S_local]` with the
    batch on dim 0, or `[S_local]`); every rank's are gathered with the shards. Without them the
    layout must be "contiguous" (the zigzag's positions depend on each row's documents)."""
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world == 1:
        return local
    if positions is None:
        if layout != "contiguous":
            raise ValueError(f"gather_sequence needs this rank's positions= for layout={layout!r}")
        positions = shard_positions(local.shape[dim] * world, world, dist.get_rank(group), layout)
    positions = positions.to(local.device)
    pieces = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    held = [torch.empty_like(positions) for _ in range(world)]
    dist.all_gather(held, positions.contiguous(), group=group)
    data, order = torch.cat(pieces, dim=dim), torch.cat(held, dim=-1)
    if order.dim() == 1:
        return torch.empty_like(data).index_copy_(dim, order, data)
    rows = data.movedim(dim, 1)  # [B, S, ...]
    index = order.view(*order.shape, *[1] * (rows.dim() - 2)).expand_as(rows)
    return torch.empty_like(rows).scatter_(1, index, rows).movedim(1, dim)


def check_seq_len(seq_len: int, cp_degree: int, block: int = 128, layout: str = "zigzag") -> None:
    """Refuse a sequence length the layout cannot split into whole kernel blocks."""
    parts = 2 * cp_degree if layout == "zigzag" else cp_degree
    if seq_len % (parts * block):
        raise ValueError(f"seq_len={seq_len} is not divisible by {parts} x {block} = {parts * block} "
                         f"({'2 x ' if layout == 'zigzag' else ''}cp_degree={cp_degree} x kernel block={block}); "
                         f"pick a multiple of {parts * block}")
