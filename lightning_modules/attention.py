"""Our kernels as Hugging Face attention implementations: `triton_attn` (Triton, one device) and `ring`
(context parallel over a process group).

`register()` adds both to transformers' `AttentionInterface` and `AttentionMaskInterface` (without
the latter a custom attention silently receives no padding mask). The mask function hands over the
2-D padding mask only when there is padding, never a dense `[B, 1, S, S]` one; padded tokens get
document id -1, which the kernels treat as padding: seen by nothing, their blocks skipped. q, k and v
reach the kernels in one dtype (`compute_dtype`). Packed sequences pass `doc_ids=` `[B, S]` to the
model's forward, and the global `position_ids` are the ones RoPE gets, so causal masking follows the real positions.
The ring's process group is process-wide (`use_context_parallel`), set once by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from kernels.reference import block_attn, block_attn_backward
from kernels.ring_attn import RingComm, ring_attn

@dataclass
class _ContextParallel:
    group: dist.ProcessGroup | None = None
    blocks: str = "auto"  # "auto": Triton on CUDA tensors, the torch reference elsewhere; or "torch" / "triton"


_STATE = _ContextParallel()


def use_context_parallel(group: dist.ProcessGroup | None, blocks: str = "auto") -> None:
    """Set the process group the `ring` attention runs over (None: the default group, or one process)."""
    if blocks not in ("auto", "torch", "triton"):
        raise ValueError(f"blocks must be 'auto', 'torch' or 'triton', not {blocks!r}")
    _STATE.group, _STATE.blocks = group, blocks


def _documents(attention_mask: torch.Tensor | None, doc_ids: torch.Tensor | None, like: torch.Tensor,
               ) -> torch.Tensor | None:
    """Document ids `[B, S]` with padded tokens (2-D mask False) moved to a document of their own."""
    if attention_mask is None:
        return doc_ids
    if attention_mask.dim() != 2:
        raise ValueError(f"the flash/ring attention takes a 2-D padding mask, got shape {tuple(attention_mask.shape)}")
    docs = doc_ids if doc_ids is not None else torch.zeros(like.shape[0], like.shape[2], dtype=torch.long,
                                                           device=like.device)
    return torch.where(attention_mask.to(torch.bool), docs, torch.full_like(docs, -1))


def compute_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The one dtype q, k and v enter the kernels in: the autocast dtype when autocast is on (RoPE's fp32
    cos/sin leave q and k fp32 while v is the projection's bf16), else the projections' (value's) dtype."""
    device = query.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return value.dtype


def _one_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = compute_dtype(query, key, value)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in (query, key, value))


def _positions(position_ids: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if position_ids is None:
        return torch.arange(like.shape[2], device=like.device)
    return position_ids


def flash_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """`attn_implementation="triton_attn"`: q `[B, Hq, S, D]`, k/v `[B, Hkv, S, D]` -> (out `[B, S, Hq, D]`, None)."""
    from kernels.flash_attn import flash_attn

    if dropout:
        raise ValueError("the flash attention has no dropout; set config.attention_dropout=0")
    pos = _positions(position_ids, query)
    docs = _documents(attention_mask, doc_ids, query)
    query, key, value = _one_dtype(query, key, value)
    out = flash_attn(query, key, value, softmax_scale=scaling, causal=True, q_pos=pos, k_pos=pos, doc_q=docs,
                     doc_k=docs)
    return out.transpose(1, 2).contiguous(), None


def ring_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """`attn_implementation="ring"`: this rank's shard q `[B, Hq, S_local, D]`, k/v `[B, Hkv, S_local, D]`
    with global `position_ids` `[B, S_local]` -> (out `[B, S_local, Hq, D]`, None)."""
    if dropout:
        raise ValueError("the ring attention has no dropout; set config.attention_dropout=0")
    comm = RingComm(_STATE.group)
    if position_ids is None and comm.world > 1:
        raise ValueError("ring attention over several ranks needs the global position_ids of the shard "
                         "(lightning_modules.context_parallel.shard_batch makes them)")
    triton = _STATE.blocks == "triton" or (_STATE.blocks == "auto" and query.is_cuda)
    if triton:
        from kernels.flash_attn import triton_block_attn, triton_block_attn_backward

        fns = dict(block_attn_fn=triton_block_attn, block_attn_backward_fn=triton_block_attn_backward)
    else:
        fns = dict(block_attn_fn=block_attn, block_attn_backward_fn=block_attn_backward)
    query, key, value = _one_dtype(query, key, value)
    out = ring_attn(query, key, value, positions=_positions(position_ids, query), causal=True, softmax_scale=scaling,
                    doc_ids=_documents(attention_mask, doc_ids, query), comm=comm, **fns)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation="triton_attn"` and `"ring"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    # no "flash" in a name: transformers takes any such name for its own flash-attention family
    for name, fn in (("triton_attn", flash_attention_forward), ("ring", ring_attention_forward)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, flash_attention_mask)  # None, or the 2-D padding mask
