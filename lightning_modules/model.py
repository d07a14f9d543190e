"""Loading a Llama-family causal LM for a stage: weights, RoPE base, context length, attention."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from lightning_modules import attention as attention_impls
from lightning_modules.byte_tokenizer import byte_tokenizer
from lightning_modules.errors import ConfigError

# config name -> transformers attn_implementation ("flash" is ours; transformers reserves names with "flash")
ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash": "triton_attn", "ring": "ring"}


def load_tokenizer(spec: str):
    """`bytes` (the byte tokenizer of `model=tiny`) or a local folder with a Hugging Face tokenizer."""
    if spec == "bytes":
        return byte_tokenizer()
    if not (Path(spec) / "tokenizer_config.json").is_file():
        raise ConfigError(f"no tokenizer in {spec} (tokenizer_config.json missing); set model.tokenizer to a "
                          f"local model folder")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_rope_theta(model: PreTrainedModel, rope_theta: float, max_position_embeddings: int) -> None:
    """Give an existing model a new RoPE base and context length.

    transformers 5 keeps θ in `config.rope_parameters`; the rotary modules' `inv_freq` buffers are
    computed at construction and are not in the state dict, so the modules are rebuilt here.
    """
    config = model.config
    config.rope_parameters["rope_theta"] = float(rope_theta)
    config.max_position_embeddings = int(max_position_embeddings)
    for name, module in list(model.named_modules()):
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            rebuilt = type(module)(config=config).to(module.inv_freq.device)
            setattr(parent, name.rpartition(".")[2], rebuilt)


def build_model(init_from: str | None, config: dict | None, rope_theta: float, max_position_embeddings: int,
                attention: str = "sdpa") -> PreTrainedModel:
    """The stage's starting model: `from_pretrained(init_from)`, or a random init from `config` (a
    LlamaConfig's keys) when `init_from` is None; then the stage's θ, length and attention.

    Training runs on fp32 weights whatever the checkpoint holds; the checkpoint's own dtype (`dtype` or
    `torch_dtype` in its config.json, bf16 for Llama-3) is kept as `model.base_dtype`, the dtype the stage's
    export is written in. A random init takes `dtype` from `config` when set there, else float32."""
    if attention not in ATTENTION:
        raise ConfigError(f"attention must be one of {sorted(ATTENTION)}, not {attention!r}")
    attention_impls.register()
    impl = ATTENTION[attention]
    if init_from is not None:
        if not (Path(init_from) / "config.json").is_file():
            raise ConfigError(f"no model in {init_from} (config.json missing)")
        saved = json.loads((Path(init_from) / "config.json").read_text())  # from_pretrained overwrites its dtype
        base_dtype = saved.get("dtype") or saved.get("torch_dtype")
        model = AutoModelForCausalLM.from_pretrained(init_from, attn_implementation=impl, dtype=torch.float32)
    elif config is not None:
        model = LlamaForCausalLM(LlamaConfig(**config))
        model.set_attn_implementation(impl)
        base_dtype = model.config.dtype
    else:
        raise ConfigError("set model.path (a local Hugging Face model folder) or use model=tiny")
    set_rope_theta(model, rope_theta, max_position_embeddings)
    model.config.use_cache = False
    model.base_dtype = _as_dtype(base_dtype)
    return model


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A config's dtype (a torch.dtype, a name such as "bfloat16", or unset) as a torch.dtype; unset is float32."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, str):
        named = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(named, torch.dtype):
            raise ConfigError(f"the model's config.json names an unknown dtype {dtype!r}")
        return named
    return dtype
