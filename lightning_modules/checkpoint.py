"""Checkpoints that a kill cannot leave half-written (issue 14, finding 4).

Lightning's `ModelCheckpoint` rewrites `last.ckpt` in place; under trainer=fsdp it is a torch distributed checkpoint
folder whose shards, `.metadata` and `meta.pt` the ranks overwrite one by one, so a kill mid-save leaves the only
checkpoint a mix of two steps or truncated. `AtomicCheckpoint` writes every save to `<name>.tmp` next to its target;
once every rank has finished, rank 0 puts it in place: a file by one `os.replace`, a folder by renaming the old one to
`<name>.prev`, the new one in, and only then deleting `<name>.prev`. A resume reads `complete_checkpoint`: the target,
or `<name>.prev` when a kill came between the two renames. A `.tmp` is never read; the next save removes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from weakref import proxy

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

TMP, PREV = ".tmp", ".prev"


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove(path: Path) -> None:
    """Delete a checkpoint file, link or folder, if there is one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def commit(tmp: Path, path: Path) -> None:
    """Put the complete checkpoint `tmp` (file or folder) at `path`. A file replaces a file in one rename; anything
    else moves the old checkpoint to `<path>.prev` first, which is deleted only once the new one is in place."""
    prev = _sibling(path, PREV)
    if (path.exists() or path.is_symlink()) and (tmp.is_dir() or (path.is_dir() and not path.is_symlink())):
        _remove(prev)  # a stale one: `path` is complete
        os.rename(path, prev)
    os.replace(tmp, path)
    _remove(prev)


def complete_checkpoint(path: str | Path) -> tuple[Path | None, str | None]:
    """The complete checkpoint a resume from `path` reads, with a note when it is not `path` itself: `path`; else
    `<path>.prev`, kept by a save killed between its two renames; else None. `<path>.tmp` is never complete."""
    path = Path(path)
    if path.exists():
        return path, None
    prev = _sibling(path, PREV)
    if prev.exists():
        return prev, (f"{path} is missing (a save was killed while putting it in place); resuming from the "
                      f"checkpoint before it, {prev}")
    return None, None


class AtomicCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments and state) whose saves are written to `<name>.tmp` and renamed into place
    once complete on every rank; see the module docstring."""

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so that checkpoints written by either class resume into the other."""
        return ModelCheckpoint.__qualname__ + super().state_key[len(type(self).__qualname__):]

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Save to `<filepath>.tmp` on every rank (a distributed checkpoint is written by all), then rank 0 commits it
        once all have finished; bookkeeping and loggers as ModelCheckpoint's, after the commit."""
        if not _is_local_file_protocol(filepath):  # object stores put an object whole
            return super()._save_checkpoint(trainer, filepath)
        path = Path(filepath)
        tmp = _sibling(path, TMP)
        if trainer.is_global_zero:
            _remove(tmp)  # left by a killed save
        trainer.strategy.barrier("AtomicCheckpoint.clean")
        trainer.save_checkpoint(str(tmp), self.save_weights_only)  # ends in a barrier: every rank has written its part
        if trainer.is_global_zero:
            commit(tmp, path)
        trainer.strategy.barrier("AtomicCheckpoint.commit")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
