"""Quiet, useful logs: `quiet()` drops Lightning's adverts and exactly the warnings it lists (a real run, in a
fresh interpreter, against one without it), and the stage's progress shows loss, tokens/s and an ETA."""

import os
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

# A fresh interpreter (no pytest warning capture): a tiny stage of 6 steps with a checkpoint every 3 and the
# progress line every 2, resumed from its last checkpoint to step 8 (Lightning's resume warning), one forward
# of the loss module under FSDP2 on a 1-rank gloo group (its view-tensor warning), save_pretrained (the shards
# bar), and two controls that must stay visible: the LeafSpec message from another module, and a real
# warning of Lightning's own (re-running into a non-empty CSV log folder).
SCRIPT = textwrap.dedent("""
    import sys, warnings
    if sys.argv[1] == "quiet":
        from lightning_modules.progress import quiet
        quiet()
        quiet()  # idempotent: no second filter or hook
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader
    from lightning_modules.module import LongContextLM
    from lightning_modules.progress import stage_progress
    from tests.lightning_modules.steps import CONFIG, batch
    from tests.servers import free_port

    out = sys.argv[2]
    def fit(max_steps, ckpt_path=None):
        module = LongContextLM(model_config=CONFIG, seq_len=128, max_steps=max_steps, loss_chunk_tokens=64)
        # the resumed run leaves its checkpointing to Lightning, whose default one brings the litmodels advert
        checkpoint = [] if ckpt_path else [ModelCheckpoint(out, save_last=True, save_top_k=0, every_n_train_steps=3)]
        trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, enable_model_summary=False, log_every_n_steps=1,
                            enable_progress_bar=False, logger=CSVLogger(out, name="logs", version=""),
                            callbacks=[*checkpoint, stage_progress(False, "tiny", every_n_steps=2)])
        trainer.fit(module, DataLoader([batch(seed=i) for i in range(8)], batch_size=None), ckpt_path=ckpt_path)
        return module

    module = fit(6)
    fit(8, ckpt_path=out + "/last.ckpt")
    module.model.save_pretrained(out + "/hf")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    sharded = LongContextLM(model_config=CONFIG, seq_len=128, max_steps=1, fsdp=True, loss_chunk_tokens=64)
    sharded.configure_model()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log", category=UserWarning)  # no trainer: no logging
        sharded.training_step(batch(), 0)
    dist.destroy_process_group()
    warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, "elsewhere.py",
                           1, module="elsewhere")
""")

SILENCED = ["Tip:", "litmodels", "litlogger", "deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`",
            "(FSDPChunkedLossLM) returned a view tensor", "You're resuming from a checkpoint", "Writing model shards"]
# a real warning (the resumed run's CSV logger deletes the earlier metrics.csv) and the LeafSpec text from elsewhere
STILL_SHOWN = ["Experiment logs directory", "elsewhere.py:1: FutureWarning: `isinstance(treespec, LeafSpec)`"]
LINE = re.compile(r"^tiny step (\d+)/(\d+) loss \d+\.\d{4} tok/s [\d.]+k? eta (\d+:\d\d:\d\d)$")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """The script's console output (stdout + stderr), without and with `quiet()`, run side by side."""
    procs = {}
    for mode in ("loud", "quiet"):
        out = tmp_path_factory.mktemp(mode)
        (out / "run.py").write_text(SCRIPT)
        procs[mode] = subprocess.Popen([sys.executable, str(out / "run.py"), mode, str(out)], cwd=ROOT, text=True,
                                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outputs = {mode: p.communicate(timeout=120)[0] for mode, p in procs.items()}
    for mode, p in procs.items():
        assert p.returncode == 0, outputs[mode][-3000:]
    return outputs


@pytest.mark.slow
def test_without_quiet_the_run_shows_every_message_quiet_drops(runs):
    """The control: each silenced message really occurs in this run (a test that cannot fail proves nothing)."""
    for text in SILENCED + STILL_SHOWN:
        assert text in runs["loud"], text


@pytest.mark.slow
def test_quiet_drops_the_adverts_and_the_known_warnings_and_nothing_else(runs):
    for text in SILENCED:
        assert text not in runs["quiet"], text
    for text in STILL_SHOWN:
        assert text in runs["quiet"], text


@pytest.mark.slow
def test_with_the_bar_off_a_line_every_n_steps_shows_loss_tokens_per_s_and_eta(runs):
    lines = [m.groups() for m in map(LINE.match, runs["quiet"].splitlines()) if m]
    # steps 2 and 4, the end of the stage (6), and the resumed run's end (8/8); the last lines' ETA is zero
    assert [(step, total) for step, total, _ in lines] == [("2", "6"), ("4", "6"), ("6", "6"), ("8", "8")], lines
    assert lines[-1][2] == lines[-2][2] == "0:00:00"


def test_the_bar_counts_the_stages_steps_and_shows_loss_tokens_per_s_and_eta(tmp_path, capsys):
    import lightning as L
    from torch.utils.data import DataLoader

    from lightning_modules.module import LongContextLM
    from lightning_modules.progress import StageProgressBar, stage_progress
    from tests.lightning_modules.steps import CONFIG, batch

    bar = stage_progress(True, "tiny")
    assert isinstance(bar, StageProgressBar)
    module = LongContextLM(model_config=CONFIG, seq_len=128, max_steps=4, loss_chunk_tokens=64,
                           response_loss_weight=1.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar], default_root_dir=tmp_path)
    data = [{**b, "response": b["labels"] >= 0} for b in (batch(seed=i) for i in range(8))]
    trainer.fit(module, DataLoader(data, batch_size=None))
    frames = [f.strip() for f in re.split(r"[\r\n]", capsys.readouterr().out) if f.strip()]
    shown = [f for f in frames if f.startswith("tiny:")]
    assert shown and all("Epoch" not in f for f in frames), frames
    # one bar over the stage's steps (not an epoch's batches), each step's metrics once the module logged them
    assert re.fullmatch(r"tiny: 100%\|█+\| 4/4 \[\d\d:\d\d, loss=\d+\.\d{4}, response_loss=\d+\.\d{4}, "
                        r"tok/s=[\d.]+k?, eta=0:00:00\]", shown[-1]), shown[-1]
    assert any(re.search(r" 3/4 .*tok/s=.*eta=0:00:\d\d\]", f) for f in shown), shown


def test_the_eta_is_steps_left_times_the_recent_time_per_step_without_the_start_up(monkeypatch):
    from lightning_modules import progress

    now = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    clock = progress.StepClock(window=3)
    clock.start(100)  # a resumed stage: step 100 of 200
    assert clock.eta(100, 200) == "?"
    now[0] = 30.0  # the first step includes the start-up
    assert clock.tick(101) and not clock.tick(101)  # accumulation's micro-batches mark a step once
    assert clock.eta(101, 200) == "0:49:30"  # 99 steps x 30 s: all there is so far
    for step, t in ((102, 32.0), (103, 34.0), (104, 38.0), (105, 42.0)):
        now[0] = t
        clock.tick(step)
    assert clock.seconds_per_step() == pytest.approx((42.0 - 32.0) / 3)  # the last 3 steps: 2, 4, 4 s
    assert clock.eta(105, 200) == "0:05:17"  # 95 x 10/3 s
    assert progress._si(3620.4) == "3.62k" and progress._si(1.5e6) == "1.5M" and progress._si(951.0) == "951"
