"""Cross-entropy over the vocabulary in chunks of tokens, never holding the whole sequence's logits.

At 128k tokens and a 128k vocabulary, fp32 logits alone are 64 GB. Each chunk's logits are made,
reduced to a summed loss, and dropped; backward recomputes them one chunk at a time (activation
checkpointing per chunk), so peak memory is one chunk's logits, not the sequence's.
"""

from __future__ import annotations

import torch
from torch import nn
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


class ChunkedLossLM(nn.Module):
    """A Hugging Face causal LM whose forward returns (summed loss, label count) through the chunked
    loss instead of logits. Being the module that is called, it is the one FSDP wraps at the root:
    its forward gathers the embeddings, final norm and LM head (tied or not) and frees them after."""

    def __init__(self, model: nn.Module, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.model, self.chunk_tokens = model, chunk_tokens

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """input ids, shifted labels, global positions `[B, S_local]` -> (loss sum, count)."""
        hidden = self.model.base_model(input_ids=input_ids, position_ids=position_ids,
                                       **attention_kwargs).last_hidden_state  # [B, S_local, H]
        weight = self.model.get_output_embeddings().weight  # [V, H]
        return chunked_cross_entropy(hidden, weight, labels, self.chunk_tokens)
