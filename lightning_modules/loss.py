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


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                response: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()  # [chunk, V], fp32 for the softmax
    token = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")  # [chunk]
    return torch.stack([token.sum(), (token * response).sum()])


def chunked_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   response: torch.Tensor | None = None, chunk_tokens: int = 4096,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed next-token loss over the counted labels and over those marked `response`, with both counts.

    hidden `[..., H]` (the final norm's output), weight `[V, H]` (the LM head), labels `[...]` already
    shifted (`IGNORE_INDEX` where no loss is taken), response `[...]` bool (None: none marked). Divide each
    sum by its count summed over every rank that holds part of the batch.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    counted = labels != IGNORE_INDEX
    response = torch.zeros_like(counted) if response is None else response.reshape(-1) & counted
    totals = hidden.new_zeros(2, dtype=torch.float32)
    for start in range(0, labels.numel(), chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        args = (hidden[sl], weight, labels[sl], response[sl].float())
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            totals = totals + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            totals = totals + _chunk_loss(*args)
    return totals[0], counted.sum(), totals[1], response.sum()


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and the number of counted labels (see `chunked_losses`)."""
    total, count, _, _ = chunked_losses(hidden, weight, labels, None, chunk_tokens)
    return total, count


class ChunkedLossLM(nn.Module):
    """A Hugging Face causal LM whose forward returns (summed loss, label count) through the chunked
    loss instead of logits. Being the module that is called, it is the one FSDP wraps at the root:
    its forward gathers the embeddings, final norm and LM head (tied or not) and frees them after."""

    def __init__(self, model: nn.Module, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.model, self.chunk_tokens = model, chunk_tokens

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                response: torch.Tensor | None = None, **attention_kwargs,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """input ids, shifted labels, global positions, response marks `[B, S_local]` -> (loss sum, count,
        response loss sum, response count)."""
        hidden = self.model.base_model(input_ids=input_ids, position_ids=position_ids,
                                       **attention_kwargs).last_hidden_state  # [B, S_local, H]
        weight = self.model.get_output_embeddings().weight  # [V, H]
        return chunked_losses(hidden, weight, labels, response, self.chunk_tokens)
