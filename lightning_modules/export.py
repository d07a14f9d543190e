"""End of a stage: `<out>/<stage>/hf/`, what the next stage starts from and what vLLM serves."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist


def export_hf(model, tokenizer, path: str | Path, is_writer: bool = True) -> None:
    """Write safetensors weights, tokenizer and config (the stage's RoPE base and length) atomically:
    a folder `hf.partial` renamed to `hf` once complete. Every rank calls it (FSDP gathers).

    The weights are a copy cast to the base model's dtype (`model.base_dtype`, set by `build_model`; float32
    when absent): the model itself keeps its fp32 weights. config.json is written for every reader (see
    `_config_for_every_reader`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    dtype = getattr(model, "base_dtype", torch.float32)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_writer:
        for k, v in state.items():  # one tensor at a time: each fp32 copy is freed as its cast replaces it
            if v.is_floating_point():
                state[k] = v.to(dtype)
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        use_cache, impl = model.config.use_cache, model.config._attn_implementation
        model.config.use_cache = True  # for serving
        model.config._attn_implementation = "sdpa"  # ours are registered at run time only
        try:
            model.save_pretrained(partial, state_dict=state, safe_serialization=True)
        finally:
            model.config.use_cache, model.config._attn_implementation = use_cache, impl
        _config_for_every_reader(partial / "config.json", dtype)
        tokenizer.save_pretrained(partial)
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _config_for_every_reader(config_json: Path, dtype: torch.dtype) -> None:
    """Make config.json say the same to transformers 5 and to transformers-4-era readers (some vLLM builds).

    transformers 5 keeps θ and any scaling only in `rope_parameters` and writes the dtype of the in-memory
    (fp32) weights; a transformers 4 reader then falls back to θ = 10,000 without a word. So: `dtype` and
    `torch_dtype` name the saved weights' dtype, `rope_theta` is repeated at the top level, and `rope_scaling`
    carries the scaling (the Llama-3.1 form: `rope_parameters` less θ) or null when there is none. transformers 5
    reads it back the same: a `rope_scaling` without θ takes the top-level `rope_theta`.
    """
    config = json.loads(config_json.read_text())
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = config["torch_dtype"] = name
    rope = dict(config.get("rope_parameters") or {})
    if "rope_theta" in rope:
        config["rope_theta"] = rope.pop("rope_theta")
    scaled = rope.get("rope_type", rope.get("type", "default")) != "default"
    config["rope_scaling"] = rope if scaled else None
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class ExportHF(L.Callback):
    """Exports the trained model when the stage finishes (not when it is interrupted)."""

    def __init__(self, path: str, tokenizer) -> None:
        self.path, self.tokenizer = path, tokenizer

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step >= (trainer.max_steps or 0):
            export_hf(pl_module.model, self.tokenizer, self.path, trainer.is_global_zero)
