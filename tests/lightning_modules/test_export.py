"""The stage export (`<stage>/hf/`) read by every reader: weights in the base model's dtype, and a config.json
that a transformers-4-era reader (plain json, as some vLLM builds) reads with the stage's θ and length."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lightning_modules.export import export_hf
from lightning_modules.model import load_tokenizer
from lightning_modules.module import LongContextLM

CONFIG = {"vocab_size": 261, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "rope_theta": 500000.0}
# Llama-3.1's scaling, as its config.json on the hub spells it (original length shrunk to the tiny model's)
LLAMA3_SCALING = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 256, "rope_type": "llama3"}
THETA, LENGTH = 2_000_000.0, 1024  # the stage's


def save_base(folder: Path, rope_scaling: dict | None = None) -> Path:
    """A bf16 base checkpoint; with `rope_scaling`, its config.json in the transformers-4 form of Llama-3.1's
    (top-level `rope_theta`, `rope_scaling`, `torch_dtype`), as downloaded from the hub."""
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).to(torch.bfloat16).save_pretrained(folder)
    if rope_scaling is not None:
        config = json.loads((folder / "config.json").read_text())
        del config["rope_parameters"], config["dtype"]
        config.update(rope_theta=CONFIG["rope_theta"], rope_scaling=rope_scaling, torch_dtype="bfloat16")
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_and_export(init_from: str | None, out: Path, model_config: dict | None = None) -> torch.nn.Module:
    """A stage through the project's path (module → build_model), one SGD step on fp32 weights, then export."""
    module = LongContextLM(init_from=init_from, model_config=model_config, rope_theta=THETA, seq_len=LENGTH)
    module.configure_model()
    model = module.model
    ids = torch.arange(64).unsqueeze(0) % CONFIG["vocab_size"]
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    export_hf(model, load_tokenizer("bytes"), out)
    return model


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_SCALING], ids=["plain", "llama3-scaling"])
def test_the_export_is_read_alike_by_old_and_new_readers(tmp_path, rope_scaling):
    base = save_base(tmp_path / "base", rope_scaling)
    out = tmp_path / "stage" / "hf"
    model = train_and_export(str(base), out)

    # a transformers-4-era reader: plain json, top-level keys
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == THETA and config["max_position_embeddings"] == LENGTH
    assert config["torch_dtype"] == "bfloat16" and config["dtype"] == "bfloat16"
    assert config.get("rope_scaling") == rope_scaling
    assert config["rope_parameters"]["rope_theta"] == THETA  # and the transformers 5 place

    # weights in the base's dtype, half the fp32 size; the trained model keeps its fp32 weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    fp32_bytes = 4 * sum(t.numel() for t in tensors.values())
    assert 0.45 * fp32_bytes < (out / "model.safetensors").stat().st_size < 0.55 * fp32_bytes

    # transformers 5 reads back the stage's θ, scaling and rotary tables, and the trained weights in bf16
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert loaded.config.rope_parameters == model.config.rope_parameters
    assert loaded.config.max_position_embeddings == LENGTH
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    trained = model.state_dict()
    for name, weight in loaded.state_dict().items():
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, trained[name].to(torch.bfloat16)), name


def test_a_random_init_exports_in_float32_unless_its_config_names_a_dtype(tmp_path):
    tiny = {**CONFIG, "tie_word_embeddings": True}  # like model=tiny, which names no dtype
    train_and_export(None, tmp_path / "fp32", tiny)
    train_and_export(None, tmp_path / "bf16", {**tiny, "dtype": "bfloat16"})
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["torch_dtype"] == str(dtype).removeprefix("torch.") and config["rope_theta"] == THETA
        assert config["rope_scaling"] is None
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype="auto")
        assert loaded.dtype == dtype and loaded.lm_head.weight is loaded.model.embed_tokens.weight
