"""One real training step of a tiny Llama through `LongContextLM`, in fp32 or under bf16 autocast (what
Lightning's `precision="bf16-mixed"` does), recording every Triton launch — shared by the mixed-precision
tests and the sm_90 compile check, which compiles exactly the launches a real step makes."""

from __future__ import annotations

import importlib

import torch

from lightning_modules.context_parallel import IGNORE_INDEX
from tests.kernels.compile_check import record

# head_dim 64 (Llama-3.2-1B's), GQA 4:2; small enough for the Triton interpreter
CONFIG = dict(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=64, max_position_embeddings=512, attention_dropout=0.0,
              tie_word_embeddings=False)
SEQ_LEN = 128


def batch(seq_len: int = SEQ_LEN, rows: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Packed rows: uneven documents, and padding at the end of the second row (doc id -1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (rows, seq_len), generator=g)
    docs = torch.stack([torch.arange(seq_len) // 45, torch.arange(seq_len) // 70])[:rows].clone()
    docs[-1, seq_len - 23:] = -1
    labels = ids.clone()
    labels[docs < 0] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "doc_ids": docs}


def step(attention: str, bf16: bool, *, cp_degree: int = 1, ring_blocks: str = "triton", fsdp: bool = False,
         seed: int = 0) -> tuple[float, list[dict], dict[str, torch.Tensor]]:
    """(loss, recorded launches, parameter gradients) of one training step from a seeded init."""
    from lightning_modules.module import LongContextLM

    kernels = importlib.import_module("kernels.flash_attn")
    launches: list[dict] = []

    def observe(name: str, args: dict, consts: dict) -> None:
        launches.append(record(name, args, consts))

    torch.manual_seed(seed)
    module = LongContextLM(model_config=CONFIG, rope_theta=1e4, seq_len=SEQ_LEN, attention=attention,
                           cp_degree=cp_degree, ring_blocks=ring_blocks, max_steps=1, fsdp=fsdp,
                           mixed_precision="bf16" if bf16 and fsdp else None, loss_chunk_tokens=64)
    module.configure_model()
    kernels.LAUNCH_OBSERVERS.append(observe)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch(), 0)
        loss.backward()
    finally:
        kernels.LAUNCH_OBSERVERS.remove(observe)
    grads = {n: p.grad.detach().float().clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return float(loss.detach()), launches, grads
