"""Test-only: hold a run inside one checkpoint save so that a test can SIGKILL it there.

    python train.py ... +callbacks.pause._target_=tests.lightning_modules.pause_in_save.PauseInSave \
        +callbacks.pause.step=3 +callbacks.pause.signal_file=/tmp/x/saving

At the save of `step`, rank 0 adds an object to the checkpoint that, when pickled, writes `signal_file` and sleeps.
It is pickled while the checkpoint is being written: into `meta.pt` of a distributed checkpoint folder (the shards
are written by then; `meta.pt` is open, empty), or into the in-memory buffer of a file checkpoint (nothing on disk
yet). Nothing is changed in how either is written; the save only takes longer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class _Stall:
    """Writes `signal_file` and sleeps when pickled; pickles as an empty OrderedDict."""

    def __init__(self, signal_file: str, seconds: float) -> None:
        self.signal_file, self.seconds = signal_file, seconds

    def __reduce__(self) -> tuple[type, tuple]:
        Path(self.signal_file).write_text("inside the save\n")
        time.sleep(self.seconds)
        return OrderedDict, ()


class PauseInSave(Callback):
    """Stall rank 0 for `seconds` inside the checkpoint save made at global step `step`, after writing
    `signal_file`."""

    def __init__(self, step: int, signal_file: str, seconds: float = 300.0) -> None:
        self.step, self.signal_file, self.seconds = step, signal_file, seconds

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            checkpoint["pause_in_save"] = _Stall(self.signal_file, self.seconds)
