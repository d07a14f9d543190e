"""End of a stage: `<out>/<stage>/hf/`, what the next stage starts from and what vLLM serves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import torch.distributed as dist


def export_hf(model, tokenizer, path: str | Path, is_writer: bool = True) -> None:
    """Write safetensors weights, tokenizer and config (the stage's RoPE base and length) atomically:
    a folder `hf.partial` renamed to `hf` once complete. Every rank calls it (FSDP gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_writer:
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
        tokenizer.save_pretrained(partial)
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ExportHF(L.Callback):
    """Exports the trained model when the stage finishes (not when it is interrupted)."""

    def __init__(self, path: str, tokenizer) -> None:
        self.path, self.tokenizer = path, tokenizer

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step >= (trainer.max_steps or 0):
            export_hf(pl_module.model, self.tokenizer, self.path, trainer.is_global_zero)
