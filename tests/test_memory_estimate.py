"""benchmarks/memory.py against what CPU can measure: the bytes of a real model's parameters, gradients and
AdamW state after a step, the tensors one decoder layer saves for backward (what its recompute holds under
gradient checkpointing), the parameter shapes of the real 1B/8B configs, and the script's README table."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import ROOT


def _load_script():
    """benchmarks/memory.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_memory", ROOT / "benchmarks" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


memory = _load_script()

S = 384  # no parameter has a dimension of this size, so a saved tensor with it is an activation
TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=S, attention_dropout=0.0)


def _tiny(tied: bool, **extra) -> tuple[dict, memory.ModelShape]:
    config = {**TINY, "tie_word_embeddings": tied, **extra}
    return config, memory.ModelShape.from_hf_config(config, "tiny")


@pytest.mark.parametrize("tied,extra", [(True, {}), (False, {"attention_bias": True, "mlp_bias": True})])
def test_weight_state_is_the_bytes_of_a_real_adamw_step(tied, extra):
    config, shape = _tiny(tied, **extra)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, config["vocab_size"], (1, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    params = list(model.parameters())
    real = sum(p.nbytes for p in params) + sum(p.grad.nbytes for p in params)
    real += sum(t.nbytes for state in optimizer.state.values() for t in state.values())
    assert sum(memory.weight_terms(shape, memory.Setup(seq_len=S, cp=1, world=1)).values()) == real
    # FSDP2 shards dim 0 into torch.chunk's pieces, each rank padded to the first (largest) piece
    shard = sum(p.chunk(3)[0].numel() for p in params)
    assert memory.numel(shape.params(), 3, shard=True) == shard
    assert memory.weight_terms(shape, memory.Setup(seq_len=S, cp=3, world=3))[
        "fp32 parameters + gradients + AdamW exp_avg, exp_avg_sq (16 B each)"] == 16 * shard


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.1-8b"])
def test_shipped_configs_have_the_real_models_parameters(name):
    config = json.loads((ROOT / "benchmarks" / "configs" / f"{name}.json").read_text())
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    shape = memory.load_model(ROOT / "benchmarks" / "configs" / f"{name}.json")
    assert sorted(tuple(p.shape) for p in model.parameters()) == sorted(shape.params())
    assert shape.n_params() == {"llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248}[name]


def _saved_by_one_layer(fsdp: bool, config: dict) -> int:
    """Bytes of the distinct storages one decoder layer saves for backward, as the trainer runs it: the ring
    (world 1), packed documents, bf16 parameters (FSDP's policy) or fp32 ones under bf16 autocast (DDP).
    Its input, weights, RoPE tables, positions and document ids are left out (kept elsewhere, or shared)."""
    from lightning_modules.attention import use_context_parallel
    from lightning_modules.model import build_model

    torch.manual_seed(0)
    model = build_model(None, config, 1e4, S, "ring")
    model.train()
    if fsdp:
        model.to(torch.bfloat16)
    use_context_parallel(None, "torch")
    ids = torch.randint(0, config["vocab_size"], (1, S))
    positions, docs = torch.arange(S)[None], (torch.arange(S) // 100)[None]
    x = model.model.embed_tokens(ids).detach().requires_grad_()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if S in t.shape:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fsdp):
            cos, sin = model.model.rotary_emb(x, positions)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model.model.layers[0](x, position_embeddings=(cos, sin), position_ids=positions, doc_ids=docs)
    finally:
        use_context_parallel(None, "auto")
    for shared in (x, cos, sin, positions, docs):
        storages.pop(shared.untyped_storage().data_ptr(), None)
    return sum(storages.values())


@pytest.mark.parametrize("fsdp", [True, False], ids=["fsdp-bf16-params", "ddp-autocast"])
def test_layer_recompute_is_what_a_layer_saves(fsdp):
    config, shape = _tiny(True)
    assert _saved_by_one_layer(fsdp, config) == sum(memory.layer_saved(shape, fsdp).values()) * S


def test_activations_scale_with_tokens_per_gpu():
    shape = memory.load_model(ROOT / "benchmarks" / "configs" / "llama-3.2-1b.json")
    base = memory.Setup(seq_len=131072, cp=1, world=1)
    double = memory.Setup(seq_len=2 * 131072, cp=1, world=1)
    ring = memory.Setup(seq_len=131072, cp=2, world=2)
    assert memory.checkpointed_inputs(shape, double) == 2 * memory.checkpointed_inputs(shape, base)
    assert 2 * memory.checkpointed_inputs(shape, ring) == memory.checkpointed_inputs(shape, base)
    # every activation and ring buffer is linear in the length (nothing S x S), the loss's logits are one chunk
    one, two = memory.estimate(shape, base), memory.estimate(shape, double)
    assert two.activations == 2 * one.activations and two.attention == 2 * one.attention
    assert memory.loss_terms(shape, double)["one chunk's log-softmax output, its gradient and d logits (fp32)"] \
        == 12 * 4096 * shape.vocab
    # FSDP shards the 16 B/parameter over the GPUs; DDP replicates them
    assert memory.estimate(shape, ring).weights < one.weights
    assert memory.estimate(shape, memory.Setup(seq_len=131072, cp=2, world=2, fsdp=False)).weights == \
        memory.estimate(shape, memory.Setup(seq_len=131072, cp=1, world=1, fsdp=False)).weights


def test_markdown_table_for_the_8b_config():
    done = subprocess.run([sys.executable, "benchmarks/memory.py", "--markdown", "--config",
                           "benchmarks/configs/llama-3.1-8b.json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for stage in ("128k", "256k", "512k", "1m"):
        rows = [line for line in done.stdout.splitlines() if line.startswith(f"| llama-3.1-8b | {stage} |")]
        assert len(rows) == 2, done.stdout  # the GPU-count table and the breakdown
    assert "llama-3.2-1b" not in done.stdout


def test_the_optimizer_step_peak_counts_where_it_is_larger():
    shape = memory.load_model(ROOT / "benchmarks" / "configs" / "llama-3.1-8b.json")
    fsdp = memory.estimate(shape, memory.Setup(seq_len=131072, cp=8, world=8))
    assert fsdp.step < fsdp.backward == fsdp.total  # FSDP: the backward peak
    ddp = memory.estimate(shape, memory.Setup(seq_len=131072, cp=32, world=32, fsdp=False))
    assert ddp.step == round(1.1 * (24 * shape.n_params() + 4 * len(shape.params()))) == ddp.total > ddp.backward
