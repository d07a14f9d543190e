"""Checks made before a stage starts, so that a bad start fails in seconds with the fix in the message."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from lightning_modules.checkpoint import complete_checkpoint
from lightning_modules.context_parallel import check_seq_len
from lightning_modules.errors import ConfigError


def runs_dir(out_dir: str) -> str:
    """`out_dir` for a single run; a multirun job's own folder (Hydra's sweep dir / job subdir) under -m."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return out_dir
    return HydraConfig.get().runtime.output_dir


def register_resolvers() -> None:
    """`${mul:a,b}`: θ = base x 4^k in stage tables, devices x nodes in trainer=fsdp; `${runs_dir:out}`: where
    a run's stages live (see `runs_dir`)."""
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("runs_dir"):
        OmegaConf.register_new_resolver("runs_dir", runs_dir)


def check_stage(*, name: str, previous: str | None, init_from: str | None, seq_len: int, cp_degree: int,
                attention: str, kernel_block: int, layout: str, processes: int, remake: str,
                dense_max_len: int | None = None) -> None:
    """Refuse a start that cannot work: missing predecessor export, a length the ring cannot split,
    a context-parallel degree without the ring or without the processes, a dense-mask attention (sdpa,
    eager) past `dense_max_len` tokens (its `[B, 1, S, S]` mask alone is S² bytes per row)."""
    if init_from is not None and not (Path(init_from) / "config.json").is_file():
        if previous:
            raise ConfigError(f"stage {name} starts from {init_from}, which does not exist: stage {previous} has "
                              f"not been exported there. Make it first: {remake}")
        raise ConfigError(f"stage {name} starts from {init_from}, which has no config.json; set model.path "
                          f"(or stage.init_from) to a local Hugging Face model folder")
    if attention in ("sdpa", "eager") and dense_max_len is not None and seq_len > dense_max_len:
        raise ConfigError(f"stage {name}: attention={attention} builds a dense [B, 1, S, S] mask ({seq_len}^2 "
                          f"bytes = {seq_len ** 2 / 2 ** 30:.1f} GiB per row) and is limited to attention.max_len="
                          f"{dense_max_len} tokens; use attention=flash (one GPU) or attention=ring "
                          f"stage.cp_degree=N (N GPUs)")
    if cp_degree > 1 and attention != "ring":
        raise ConfigError(f"stage.cp_degree={cp_degree} needs attention=ring (got attention={attention})")
    if processes % cp_degree:
        raise ConfigError(f"{processes} processes (trainer.devices x trainer.num_nodes) cannot form groups of "
                          f"stage.cp_degree={cp_degree}")
    try:
        check_seq_len(seq_len, cp_degree, kernel_block, layout)
    except ValueError as e:
        raise ConfigError(f"stage {name}: {e}") from None


def resolve_ckpt(ckpt_path: str | None, stage_dir: str) -> str | None:
    """`last` -> `<stage_dir>/last.ckpt`, else the path; it must exist, or the `.prev` that a save killed between its
    renames keeps (used with a note; see lightning_modules/checkpoint.py); a `.tmp` never. None starts fresh."""
    if ckpt_path is None:
        return None
    path = Path(stage_dir) / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    found, note = complete_checkpoint(path)
    if found is None:
        raise ConfigError(f"ckpt_path={ckpt_path}: {path} does not exist; drop ckpt_path to start the stage "
                          f"from its beginning")
    if note and getattr(rank_zero_only, "rank", 0) == 0:
        print(f"note: {note}", file=sys.stderr)
    return str(found)
