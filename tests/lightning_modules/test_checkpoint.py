"""AtomicCheckpoint in one process: a save that dies half-written leaves the checkpoint before it whole, a kill
between the two renames of a folder checkpoint falls back to the kept `.prev`, a leftover `.tmp` is never read.
The killed multi-rank folder case runs train.py in tests/test_train_cli.py."""

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_modules import checkpoint as ckpt
from lightning_modules.checkpoint import AtomicCheckpoint, commit, complete_checkpoint
from lightning_modules.errors import ConfigError
from lightning_modules.stages import resolve_ckpt


class DiesMidWrite(TorchCheckpointIO):
    """Writes the checkpoint of `global_step` in place and dies halfway, as a kill does to any in-place writer."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if checkpoint["global_step"] != self.global_step:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
        raise RuntimeError("killed mid-write")


def _trainer(dirpath: Path, plugins: list | None = None) -> Trainer:
    return Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, plugins=plugins, default_root_dir=dirpath,
                   callbacks=[AtomicCheckpoint(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=1)])


def _step(path: Path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


def test_a_save_that_dies_half_written_keeps_the_one_before_and_the_next_run_resumes_from_it(tmp_path):
    with pytest.raises(RuntimeError, match="killed mid-write"):
        _trainer(tmp_path, [DiesMidWrite(global_step=3)]).fit(BoringModel())
    assert _step(tmp_path / "last.ckpt") == 2  # whole: the half-written step 3 went to last.ckpt.tmp
    assert (tmp_path / "last.ckpt.tmp").stat().st_size > 0
    with pytest.raises(RuntimeError, match="zip archive"):
        _step(tmp_path / "last.ckpt.tmp")

    resume = resolve_ckpt("last", str(tmp_path))
    assert resume == str(tmp_path / "last.ckpt")
    trainer = _trainer(tmp_path)
    trainer.fit(BoringModel(), ckpt_path=resume)
    assert trainer.global_step == 4 and _step(tmp_path / "last.ckpt") == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the leftover .tmp was cleared


def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "meta.pt").write_text(content)
    return path


def test_a_folder_checkpoint_is_swapped_whole_and_a_kill_between_the_renames_resumes_from_the_kept_one(
        tmp_path, monkeypatch, capsys):
    last, tmp, prev = tmp_path / "last.ckpt", tmp_path / "last.ckpt.tmp", tmp_path / "last.ckpt.prev"
    _folder(tmp, "step 1")
    commit(tmp, last)  # the first save: nothing to keep
    assert (last / "meta.pt").read_text() == "step 1" and not tmp.exists() and not prev.exists()

    _folder(tmp, "step 2")

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr(ckpt.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        commit(tmp, last)
    monkeypatch.undo()
    assert not last.exists() and (prev / "meta.pt").read_text() == "step 1"
    assert resolve_ckpt("last", str(tmp_path)) == str(prev)  # not the .tmp: nothing says it is whole
    assert f"note: {last} is missing (a save was killed while putting it in place); resuming from the checkpoint " \
           f"before it, {prev}" in capsys.readouterr().err

    shutil.rmtree(tmp)  # the resumed run's next save: the .tmp cleared, written again, committed
    _folder(tmp, "step 2")
    commit(tmp, last)
    assert (last / "meta.pt").read_text() == "step 2" and not prev.exists() and not tmp.exists()
    assert resolve_ckpt("last", str(tmp_path)) == str(last)


def test_a_file_replaces_a_file_in_one_rename_and_a_folder_or_a_file_replaces_the_other(tmp_path):
    last, tmp = tmp_path / "last.ckpt", tmp_path / "last.ckpt.tmp"
    last.write_text("old")
    tmp.write_text("new")
    commit(tmp, last)
    assert last.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    _folder(tmp, "folder")  # e.g. the stage resumed under trainer=fsdp
    commit(tmp, last)
    assert (last / "meta.pt").read_text() == "folder" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    tmp.write_text("file again")
    commit(tmp, last)
    assert last.read_text() == "file again" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_leftover_tmp_is_never_resumed_from_and_a_whole_last_ckpt_wins_over_a_stale_prev(tmp_path, capsys):
    (tmp_path / "last.ckpt.tmp").write_text("half")
    with pytest.raises(ConfigError, match="last.ckpt does not exist"):
        resolve_ckpt("last", str(tmp_path))
    assert complete_checkpoint(tmp_path / "last.ckpt") == (None, None)
    (tmp_path / "last.ckpt").write_text("whole")
    (tmp_path / "last.ckpt.prev").write_text("older")  # a kill after the new one was in place, before the delete
    assert resolve_ckpt("last", str(tmp_path)) == str(tmp_path / "last.ckpt")
    assert "note:" not in capsys.readouterr().err


def test_its_state_is_filed_under_model_checkpoints_key_so_either_resumes_the_other():
    kwargs = {"save_last": True, "save_top_k": 0, "every_n_train_steps": 50}
    assert AtomicCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
