"""The one place a batch is split along the sequence for the context-parallel group, and put back.

Every rank of a context-parallel group receives the same packed batch. `shard_batch` shifts the
labels first (so the label of a token stays with it, whichever rank holds it), masks the labels that
would cross a document boundary, and keeps each rank's share of the tokens together with their
*global* positions (RoPE and the causal mask use them) and document ids (the ring's document mask).
With world size 1 it still shifts, so one loss code path serves every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from kernels.ring_attn import shard_positions

IGNORE_INDEX = -100


@dataclass
class ShardedBatch:
    """One rank's share of a packed batch; every tensor is `[B, S_local]`."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # already shifted: labels[t] is the token that should follow input_ids[t]
    position_ids: torch.Tensor  # global positions in the packed sequence
    doc_ids: torch.Tensor
    response: torch.Tensor | None = None  # shifted like the labels: labels[t] belongs to an assistant turn


def shift_labels(labels: torch.Tensor, doc_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`[B, S]` labels moved one step left; the last token's and those whose next token starts
    another document become `ignore_index`."""
    shifted = torch.full_like(labels, ignore_index)
    shifted[:, :-1] = labels[:, 1:]
    shifted[:, :-1][doc_ids[:, 1:] != doc_ids[:, :-1]] = ignore_index
    return shifted


def shard_batch(input_ids: torch.Tensor, labels: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                *, world: int = 1, rank: int = 0, layout: str = "zigzag", ignore_index: int = IGNORE_INDEX,
                response: torch.Tensor | None = None) -> ShardedBatch:
    """This rank's share of a packed batch `[B, S]` (labels default to the inputs, documents to one; the
    optional bool `response` marks assistant tokens and moves with the labels)."""
    b, s = input_ids.shape
    labels = input_ids if labels is None else labels
    doc_ids = torch.zeros_like(input_ids) if doc_ids is None else doc_ids
    shifted = shift_labels(labels, doc_ids, ignore_index)
    pos = shard_positions(s, world, rank, layout).to(input_ids.device)
    if response is not None:
        response = shift_labels(response.long(), doc_ids, 0)[:, pos].bool()
    return ShardedBatch(input_ids=input_ids[:, pos], labels=shifted[:, pos],
                        position_ids=pos.unsqueeze(0).expand(b, -1).contiguous(), doc_ids=doc_ids[:, pos],
                        response=response)


def gather_sequence(local: torch.Tensor, group: dist.ProcessGroup | None = None, *, layout: str = "zigzag",
                    dim: int = 1) -> torch.Tensor:
    """Put the shards of a tensor (each rank's `local`, sharded along `dim`) back in sequence order."""
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world == 1:
        return local
    pieces = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    seq_len = local.shape[dim] * world
    order = torch.cat([shard_positions(seq_len, world, r, layout) for r in range(world)]).to(local.device)
    full = torch.empty_like(torch.cat(pieces, dim=dim))
    full.index_copy_(dim, order, torch.cat(pieces, dim=dim))
    return full


def check_seq_len(seq_len: int, cp_degree: int, block: int = 128, layout: str = "zigzag") -> None:
    """Refuse a sequence length the layout cannot split into whole kernel blocks."""
    parts = 2 * cp_degree if layout == "zigzag" else cp_degree
    if seq_len % (parts * block):
        raise ValueError(f"seq_len={seq_len} is not divisible by {parts} x {block} = {parts * block} "
                         f"({'2 x ' if layout == 'zigzag' else ''}cp_degree={cp_degree} x kernel block={block}); "
                         f"pick a multiple of {parts * block}")
