"""Sharding a packed batch along the sequence, and a Hugging Face Llama with our `ring` and `flash`
attention equal to the same model with `sdpa` on the whole sequence."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_modules import attention
from lightning_modules.context_parallel import IGNORE_INDEX, check_seq_len, gather_sequence, shard_batch, shift_labels
from tests.servers import free_port


def _packed(b: int = 2, s: int = 24, vocab: int = 97, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    docs = torch.stack([torch.arange(s) // 7, torch.arange(s) // 11])[:b]
    return ids, docs


def test_labels_are_shifted_and_never_cross_a_document():
    ids, docs = _packed()
    shifted = shift_labels(ids, docs)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            last = t == ids.shape[1] - 1 or docs[b, t + 1] != docs[b, t]
            assert shifted[b, t] == (IGNORE_INDEX if last else ids[b, t + 1]), (b, t)


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_shards_cover_the_batch_once_and_labels_follow_their_tokens(layout, world):
    ids, docs = _packed()
    shifted = shift_labels(ids, docs)
    seen = torch.zeros_like(ids)
    for rank in range(world):
        part = shard_batch(ids, doc_ids=docs, world=world, rank=rank, layout=layout)
        pos = part.position_ids
        assert part.input_ids.shape == (2, 24 // world)
        assert torch.equal(part.input_ids, ids.gather(1, pos))
        assert torch.equal(part.labels, shifted.gather(1, pos))  # shifted before the split, not after
        assert torch.equal(part.doc_ids, docs.gather(1, pos))
        seen.scatter_add_(1, pos, torch.ones_like(pos))
    assert torch.equal(seen, torch.ones_like(ids))


def test_sequence_lengths_the_kernel_cannot_split_are_refused_with_the_numbers():
    check_seq_len(8192, cp_degree=4, block=128)
    with pytest.raises(ValueError, match=r"seq_len=3000 is not divisible by 8 x 128 = 1024 .*cp_degree=4"):
        check_seq_len(3000, cp_degree=4, block=128)


def _tiny_llama(path, dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).to(dtype).save_pretrained(path)


def _reference(path, ids, docs, dtype=torch.float64, attention_mask=None):
    """Loss (mean over real labels) and parameter gradients of the whole sequence with `sdpa` and an
    explicit causal, same-document mask; labels shifted here by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=dtype)
    s = ids.shape[1]
    mask = torch.tril(torch.ones(s, s, dtype=torch.bool)) & (docs[:, :, None] == docs[:, None, :])
    if attention_mask is not None:
        mask &= attention_mask[:, None, :].bool()
    logits = model(input_ids=ids, attention_mask=mask[:, None]).logits
    labels = ids[:, 1:].clone()
    labels[docs[:, 1:] != docs[:, :-1]] = IGNORE_INDEX
    if attention_mask is not None:  # no loss on padding (right padding: a pad's next token is a pad)
        labels[attention_mask[:, 1:] == 0] = IGNORE_INDEX
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, logits.detach()


def _ring_worker(rank: int, world: int, port: int, path: str, layout: str) -> None:
    from transformers import AutoModelForCausalLM

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        attention.register()
        attention.use_context_parallel(None, blocks="torch")
        ids, docs = _packed(s=32)
        want_loss, want_grads, want_logits = _reference(path, ids, docs)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="ring", dtype=torch.float64)
        part = shard_batch(ids, doc_ids=docs, world=world, rank=rank, layout=layout)
        logits = model(input_ids=part.input_ids, position_ids=part.position_ids, doc_ids=part.doc_ids).logits
        count = (part.labels != IGNORE_INDEX).sum()
        dist.all_reduce(count)
        loss = F.cross_entropy(logits.flatten(0, 1), part.labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum") / count
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, want_loss, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(gather_sequence(logits.detach(), layout=layout), want_logits, atol=1e-10,
                                   rtol=1e-10)
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            torch.testing.assert_close(p.grad, want_grads[name], atol=1e-10, rtol=1e-10, msg=f"{name} rank {rank}")
        dist.barrier()  # no rank tears gloo down while the other's ring transfers may still be in flight
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_llama_with_ring_attention_over_two_ranks_equals_one_process_with_sdpa(tmp_path, layout):
    _tiny_llama(tmp_path)
    mp.start_processes(_ring_worker, args=(2, free_port(), str(tmp_path), layout), nprocs=2, start_method="spawn")


@pytest.mark.slow
def test_llama_with_triton_attn_attention_equals_sdpa_with_documents_and_padding(tmp_path):
    from transformers import AutoModelForCausalLM

    attention.register()
    _tiny_llama(tmp_path, torch.float32)
    ids, docs = _packed(s=20)
    padding = torch.ones_like(ids)
    padding[1, -3:] = 0  # right padding on the second row
    want_loss, want_grads, want_logits = _reference(tmp_path, ids, docs, torch.float32, padding)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="triton_attn", dtype=torch.float32)
    logits = model(input_ids=ids, attention_mask=padding, doc_ids=docs).logits
    labels = shard_batch(ids, doc_ids=docs).labels
    labels[:, :-1][padding[:, 1:] == 0] = IGNORE_INDEX
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    real = padding.bool()
    torch.testing.assert_close(logits[real], want_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.detach(), want_loss, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[name], atol=1e-4, rtol=1e-4, msg=name)
