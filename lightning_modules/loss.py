"""Cross-entropy over the vocabulary in chunks of tokens, never holding the whole sequence's logits.

At 128k tokens and a 128k vocabulary, fp32 logits alone are 64 GB. Each chunk's logits are made,
reduced to a summed loss, and dropped; backward recomputes them one chunk at a time (activation
checkpointing per chunk), so peak memory is one chunk's logits, not the sequence's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()  # [chunk, V], fp32 for the softmax
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and the number of counted labels.

    hidden `[..., H]` (the final norm's output), weight `[V, H]` (the LM head), labels `[...]`
    already shifted, `IGNORE_INDEX` where no loss is taken. Divide the sum by the count summed over
    every rank that holds part of the batch.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.numel(), chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss, hidden[sl], weight, labels[sl], use_reentrant=False)
        else:
            total = total + _chunk_loss(hidden[sl], weight, labels[sl])
    return total, (labels != IGNORE_INDEX).sum()
