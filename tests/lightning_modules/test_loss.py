"""The chunked cross-entropy equals plain cross-entropy in value and gradients."""

import torch
import torch.nn.functional as F

from lightning_modules.loss import IGNORE_INDEX, chunked_cross_entropy


def test_chunked_loss_equals_plain_cross_entropy_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37), generator=g)
    labels[0, :5] = IGNORE_INDEX
    labels[1, -1] = IGNORE_INDEX
    total, count = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=10)  # 74 tokens: 8 chunks, last short
    (total / count).backward()
    got = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad, weight.grad = None, None
    want = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    want.backward()
    assert count == (labels != IGNORE_INDEX).sum() == 68
    torch.testing.assert_close(total / count, want.float() if total.dtype == torch.float32 else want,
                               atol=1e-6, rtol=1e-6, check_dtype=False)
    torch.testing.assert_close(got[0], hidden.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1], weight.grad, atol=1e-6, rtol=1e-6)


def test_chunked_loss_keeps_only_one_chunk_of_logits_for_backward():
    """Saved activations stay at the inputs' size, not the [tokens, vocab] logits."""
    hidden = torch.randn(4096, 32, requires_grad=True)
    weight = torch.randn(8192, 32, requires_grad=True)
    labels = torch.randint(0, 8192, (4096,))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=512)
    assert max(saved) < 4096 * 8192 / 4, max(saved)  # full logits would be 33.5M elements
    total.backward()


def test_the_response_sum_is_the_loss_over_marked_labels_only():
    from lightning_modules.loss import chunked_losses

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 20, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 30, (3, 20), generator=g)
    labels[:, :4] = IGNORE_INDEX
    response = torch.rand(3, 20, generator=g) < 0.4
    total, count, marked, n_marked = chunked_losses(hidden, weight, labels, response, chunk_tokens=7)
    per_token = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                reduction="none").view(3, 20)
    counted = response & (labels != IGNORE_INDEX)  # a mark on an ignored label counts nothing
    assert n_marked == counted.sum() and count == (labels != IGNORE_INDEX).sum()
    torch.testing.assert_close(marked.double(), per_token[counted].sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total.double(), per_token.sum(), atol=1e-5, rtol=1e-5)
    marked.backward()
    assert hidden.grad[~counted].abs().max() == 0 and hidden.grad[counted].abs().max() > 0
