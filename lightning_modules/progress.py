"""Quiet, useful training logs.

- `quiet()`: drops Lightning's advertising tips and the warnings this project has checked and understood
  (each filter below says why it is safe); every other warning stays visible.
- `stage_progress(...)`: the stage's progress, counted in optimizer steps against `trainer.max_steps`, with
  loss, tokens/s and an ETA (steps left x the recent time per step): a tqdm bar where the trainer shows one
  (`trainer.enable_progress_bar`), else a short line on stderr every N steps.

Only the stage name and numbers reach the console: no other config value, path or environment variable.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections import deque
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

# (message regex, matched from its start; category; module regex of the frame the warning names)
KNOWN_WARNINGS: list[tuple[str, type[Warning], str]] = [
    # Lightning 2.6's own pytree helper builds torch's `LeafSpec`, which torch 2.13 deprecates. Nothing of ours
    # is involved and behaviour is unchanged; it goes once Lightning stops using the class.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree\Z"),
    # FSDP2 warns that ChunkedLossLM's outputs are views (indexes of one stacked tensor) because an in-place op on
    # a view would drop its pre-backward hook. LongContextLM.training_step only uses them out of place (detach,
    # /, +, stack), so the hook stays (test_train_cli's FSDP run trains to the weights of one process). Scoped to
    # our module's class name: a view returned by any other FSDP2 module still warns.
    (r"FSDP2-wrapped module \(FSDPChunkedLossLM\) returned a view tensor", UserWarning,
     r"torch\.distributed\.fsdp\._fully_shard\._fsdp_state\Z"),
    # On `ckpt_path=last` Lightning cannot see that our loader resumes: StepBatchSampler (the PackedDataModule's)
    # starts at `trainer.global_step`, so a resumed run reads exactly what an uninterrupted one would have.
    (r"You're resuming from a checkpoint that ended before the epoch ended", PossibleUserWarning,
     r"lightning\.pytorch\.loops\.training_epoch_loop\Z"),
]

# Lightning logs its tips through whichever of these `rank_zero_info` was last pointed at.
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                "lightning_utilities.core.rank_zero")
_TIP = "💡 Tip:"
_SHARDS_BAR = "Writing model shards"


class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing [litmodels|litlogger]" adverts (INFO, rank zero)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TIP)


def _no_shards_bar(previous: Any):
    """A transformers tqdm hook that hides `save_pretrained`'s "Writing model shards" bar (a 1/1 bar of
    carriage returns at export; train.py prints where the export went) and leaves every other bar alone."""

    def hook(factory: Any, args: tuple, kwargs: dict) -> Any:
        if kwargs.get("desc") == _SHARDS_BAR:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    hook.selflong_quiet = True  # type: ignore[attr-defined]
    return hook


def quiet() -> None:
    """Install the log and warning filters above (idempotent). Call it at the top level of the entry point, so
    processes that re-import it (ddp_spawn's ranks, Lightning's subprocess launcher) install them too."""
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)  # replaces a duplicate
    from transformers.utils import logging as hf_logging

    if hasattr(hf_logging, "set_tqdm_hook"):
        previous = hf_logging.set_tqdm_hook(None)
        hf_logging.set_tqdm_hook(previous if getattr(previous, "selflong_quiet", False) else _no_shards_bar(previous))


# --- progress ------------------------------------------------------------------------------------------------


class StepClock:
    """Wall time per optimizer step over the last `window` steps, for an ETA."""

    def __init__(self, window: int = 20) -> None:
        self.begin: tuple[float, int] | None = None
        self.marks: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def start(self, step: int) -> None:
        self.begin = (time.perf_counter(), step)
        self.marks.clear()

    def tick(self, step: int) -> bool:
        """Mark `step` as reached now; False when it was already marked (accumulation's micro-batches)."""
        last = self.marks[-1] if self.marks else self.begin
        if last is None or step <= last[1]:
            return False
        self.marks.append((time.perf_counter(), step))
        return True

    def seconds_per_step(self) -> float | None:
        """Between the last marks; from the start (set-up included) only until a second step is marked."""
        if not self.marks or self.begin is None:
            return None
        (t0, s0), (t1, s1) = (self.marks[0] if len(self.marks) > 1 else self.begin), self.marks[-1]
        return (t1 - t0) / (s1 - s0)

    def eta(self, step: int, max_steps: int) -> str:
        per_step = self.seconds_per_step()
        if per_step is None or max_steps <= 0:
            return "?"
        return str(timedelta(seconds=round(max(0, max_steps - step) * per_step)))


def _si(x: float) -> str:
    """3 significant digits with a k/M/G suffix: 3620.4 -> 3.62k."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def metric(trainer: L.Trainer, key: str) -> float | None:
    """A logged metric as a float (None: not logged yet, or not finite)."""
    v = trainer.callback_metrics.get(key)
    return None if v is None or not math.isfinite(float(v)) else float(v)


def stage_stats(trainer: L.Trainer, clock: StepClock, tokens_per_s: float | None = None) -> dict[str, str]:
    """loss, response loss and MFU where logged, tokens/s (the last step's, unless given), ETA: the module's
    metrics of the last finished step."""
    out: dict[str, str] = {}
    for key, name, fmt in (("train/loss", "loss", "{:.4f}"), ("train/response_loss", "response_loss", "{:.4f}"),
                           ("train/tokens_per_s", "tok/s", None), ("train/mfu", "mfu", "{:.1%}")):
        v = tokens_per_s if name == "tok/s" and tokens_per_s is not None else metric(trainer, key)
        if v is not None:
            out[name] = _si(v) if fmt is None else fmt.format(v)
    out["eta"] = clock.eta(trainer.global_step, trainer.max_steps)
    return out


class StageProgressBar(TQDMProgressBar):
    """One tqdm bar for the whole stage: optimizer steps out of `trainer.max_steps` (from the restored step on
    a resume), with loss, tokens/s and ETA. It is drawn when the next step starts (or the stage ends): the
    module logs tokens/s in its `on_train_batch_end`, which Lightning runs after the callbacks' hook."""

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, name: str = "train", window: int = 20, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.name, self.clock = name, StepClock(window)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return stage_stats(trainer, self.clock)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = Tqdm(desc=self.name, total=trainer.max_steps if trainer.max_steps > 0 else None,
                                       initial=trainer.global_step, position=2 * self.process_position,
                                       disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout,
                                       smoothing=0, bar_format=self.BAR_FORMAT)
        self.clock.start(trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """The bar counts the stage's steps, not an epoch's batches: nothing to reset."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._show(trainer, force=False)

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        """Shown at the next step's start, once the module has logged this step's metrics."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Shown at the next step's start or at the end of the stage."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._show(trainer, force=True)
        super().on_train_end(trainer, pl_module)

    def _show(self, trainer: L.Trainer, force: bool) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        ticked = self.clock.tick(step)
        if not bar.disable and (force or (ticked and self._should_update(step, bar.total))):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, trainer.lightning_module))  # refreshes


class ProgressLine(L.Callback):
    """With the bar off: a line on stderr every `every_n_steps` optimizer steps and one at the end of the stage,
    e.g. `tiny_1k step 10/300 loss 4.6974 tok/s 3.62k eta 0:01:56` (rank zero only). Its tokens/s is over the
    steps since the previous line (their harmonic mean: total tokens / total time for equal-sized steps)."""

    def __init__(self, name: str = "train", every_n_steps: int = 10, window: int = 20) -> None:
        self.name, self.every, self.clock = name, max(1, every_n_steps), StepClock(window)
        self._shown, self._rates = -1, []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.start(trainer.global_step)
        self._shown, self._rates = trainer.global_step, []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # the previous step's metrics are complete here (the module logs tokens/s after the callbacks' hook)
        if self._tick(trainer) and trainer.global_step % self.every == 0:
            self._show(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tick(trainer)
        if trainer.global_step != self._shown:
            self._show(trainer)

    def _tick(self, trainer: L.Trainer) -> bool:
        if not self.clock.tick(trainer.global_step):
            return False
        if trainer.is_global_zero and (rate := metric(trainer, "train/tokens_per_s")):
            self._rates.append(rate)
        return True

    def _show(self, trainer: L.Trainer) -> None:
        self._shown = trainer.global_step
        if trainer.is_global_zero:
            rate = len(self._rates) / sum(1 / r for r in self._rates) if self._rates else None
            self._rates = []
            total = trainer.max_steps if trainer.max_steps > 0 else "?"
            stats = " ".join(f"{k} {v}" for k, v in stage_stats(trainer, self.clock, rate).items())
            # printed, not logged: spawned ranks (ddp_spawn) have no logging configured, rank zero included
            print(f"{self.name} step {trainer.global_step}/{total} {stats}", file=sys.stderr, flush=True)


def stage_progress(progress_bar: bool, name: str = "train", every_n_steps: int = 10,
                   window: int = 20) -> L.Callback:
    """The progress callback for `trainer.enable_progress_bar`: a `StageProgressBar` when it is on, else a
    `ProgressLine` (Lightning refuses a progress-bar callback while the bar is off)."""
    if progress_bar:
        return StageProgressBar(name, window)
    return ProgressLine(name, every_n_steps, window)
