"""Attention kernels. Plain tensors and scalars in and out; imports only torch and triton.

- `flash_attn(q, k, v, *, softmax_scale=None, causal=False, q_pos=None, k_pos=None, doc_q=None,
  doc_k=None, return_lse=False)`: differentiable Triton flash attention (GQA, global-position causal
  masks, document masks).
- `triton_block_attn` / `triton_block_attn_backward`: the block function and its backward a ring calls.
- `reference.block_attn` / `reference.block_attn_backward`: the torch oracle (and the CPU block function).
"""

from kernels.flash_attn import flash_attn, triton_block_attn, triton_block_attn_backward
from kernels.reference import block_attn, block_attn_backward

__all__ = ["block_attn", "block_attn_backward", "flash_attn", "triton_block_attn", "triton_block_attn_backward"]
