"""train.py as a user runs it: real processes, the tiny model on the passkey task, stage chains,
the ring over two gloo processes, SIGKILL and resume, and every bad start refused."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, write_passkey

SMALL = ["stage.warmup_steps=2"]
STAGE_LENGTHS = {"tiny_1k": 1024, "tiny_2k": 2048}


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "SELFLONG_DATA": str(data_dir)}


def _train(data_dir: Path, *args: str, samples: int = 60, timeout: int = 300) -> subprocess.CompletedProcess:
    """train.py in a subprocess, after writing the stage's passkey JSONL as `make demo` does (the one needle
    generator, through the composed evaluate config)."""
    stage = next((a.split("=", 1)[1] for a in args if a.startswith("stage=")), "tiny_1k")
    write_passkey(data_dir / "passkey" / f"train_{STAGE_LENGTHS[stage]}.jsonl", STAGE_LENGTHS[stage], samples)
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=_env(data_dir), capture_output=True,
                          text=True, timeout=timeout)


def _losses(data_dir: Path, stage: str) -> list[float]:
    with open(data_dir / "train" / stage / "logs" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _final_loss(stdout: str) -> float:
    return float(stdout.split("final loss ")[1].split(",")[0])


@pytest.mark.slow
def test_tiny_stage_learns_and_the_next_stage_starts_from_its_export_with_theta_x4(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = _train(tmp_path, "stage.max_steps=40", "stage.warmup_steps=5", samples=200)
    assert first.returncode == 0, first.stderr[-3000:]
    losses = _losses(tmp_path, "tiny_1k")
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < losses[0] - 1.0, losses
    hf = tmp_path / "train" / "tiny_1k" / "hf"
    assert json.loads((hf / "config.json").read_text())["rope_parameters"]["rope_theta"] == 10000.0

    second = _train(tmp_path, "stage=tiny_2k", "stage.max_steps=3", *SMALL)
    assert second.returncode == 0, second.stderr[-3000:]
    config = json.loads((tmp_path / "train" / "tiny_2k" / "hf" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 40000.0 and config["max_position_embeddings"] == 2048
    # it started from the trained weights, not a random init (whose loss is about ln 261 = 5.56)
    assert _losses(tmp_path, "tiny_2k")[0] < losses[0] - 0.8
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "train" / "tiny_2k" / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "train" / "tiny_2k" / "hf")
    assert model.model.rotary_emb.inv_freq[1] == pytest.approx(40000.0 ** (-2 / 32))
    ids = tokenizer("The secret key for Ada is", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 261)


@pytest.mark.slow
def test_ring_over_two_processes_gives_the_loss_of_one_process_with_sdpa(tmp_path):
    one = _train(tmp_path / "one", "stage.max_steps=3", *SMALL)
    assert one.returncode == 0, one.stderr[-3000:]
    ring = _train(tmp_path / "ring", "stage.max_steps=3", *SMALL, "attention=ring", "stage.cp_degree=2",
                  "trainer.devices=2", "trainer.strategy=ddp_spawn")
    assert ring.returncode == 0, ring.stderr[-3000:]
    want, got = _losses(tmp_path / "one", "tiny_1k"), _losses(tmp_path / "ring", "tiny_1k")
    assert len(got) == len(want) == 3
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=2e-5, rtol=2e-5)


@pytest.mark.slow
def test_fsdp_with_the_ring_gives_the_loss_and_weights_of_one_process(tmp_path):
    """trainer=fsdp (FSDP2 over both ranks) with the ring over the same two ranks, on CPU and gloo."""
    from safetensors.torch import load_file

    one = _train(tmp_path / "one", "stage.max_steps=3", *SMALL)
    assert one.returncode == 0, one.stderr[-3000:]
    fsdp = _train(tmp_path / "fsdp", "stage.max_steps=3", *SMALL, "trainer=fsdp", "trainer.accelerator=cpu",
                  "trainer.devices=2", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
                  "attention=ring", "stage.cp_degree=2")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "fsdp", "tiny_1k")),
                               torch.tensor(_losses(tmp_path / "one", "tiny_1k")), atol=5e-5, rtol=5e-5)
    assert (tmp_path / "fsdp" / "train" / "tiny_1k" / "last.ckpt").is_dir()  # a distributed checkpoint
    want = load_file(tmp_path / "one" / "train" / "tiny_1k" / "hf" / "model.safetensors")
    got = load_file(tmp_path / "fsdp" / "train" / "tiny_1k" / "hf" / "model.safetensors")
    for name, tensor in want.items():  # the gathered export equals the unsharded run's weights
        torch.testing.assert_close(got[name], tensor, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_from_last_ckpt_to_the_same_loss(tmp_path):
    args = ["stage.max_steps=10", "stage.checkpoint_every=2", *SMALL]
    whole = _train(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stage = tmp_path / "cut" / "train" / "tiny_1k"
    write_passkey(tmp_path / "cut" / "passkey" / "train_1024.jsonl", 1024, 60)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=_env(tmp_path / "cut"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (stage / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (stage / "hf").exists(), "the run finished before it could be killed"
    step = torch.load(stage / "last.ckpt", weights_only=False)["global_step"]
    assert 2 <= step < 10
    resumed = _train(tmp_path / "cut", *args, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stderr
    assert _final_loss(resumed.stdout) == pytest.approx(_final_loss(whole.stdout), abs=1e-6)
    # metrics.csv holds every step once: the killed run's rows before the checkpoint, then the resumed run's
    assert _losses(tmp_path / "cut", "tiny_1k") == pytest.approx(_losses(tmp_path / "whole", "tiny_1k"), abs=1e-6)


@pytest.mark.slow
def test_bad_starts_are_refused_with_what_to_do(tmp_path):
    cases = [
        (["stage=tiny_2k"], f"stage tiny_2k starts from {tmp_path}/train/tiny_1k/hf, which does not exist: "
                            "stage tiny_1k has not been exported there. Make it first: "
                            "python train.py model=tiny stage=tiny_1k"),
        (["stage.seq_len=1000"], "seq_len=1000 is not divisible by 2 x 128 = 256"),
        (["attention=ring", "stage.cp_degree=2", "trainer.devices=2", "stage.seq_len=1280"],
         "seq_len=1280 is not divisible by 4 x 128 = 512"),
        (["stage.cp_degree=2"], "stage.cp_degree=2 needs attention=ring (got attention=sdpa)"),
        (["stage.seq_len=32768"], "attention=sdpa builds a dense [B, 1, S, S] mask (32768^2 bytes = 1.0 GiB per row) "
                                  "and is limited to attention.max_len=16384 tokens; use attention=flash (one GPU) or "
                                  "attention=ring stage.cp_degree=N (N GPUs)"),
        (["attention=ring", "stage.cp_degree=2"], "1 processes (trainer.devices x trainer.num_nodes) cannot form"),
        (["ckpt_path=last"], f"ckpt_path=last: {tmp_path}/train/tiny_1k/last.ckpt does not exist"),
        (["data=selflong"], f"data file {tmp_path}/synth/samples.jsonl does not exist"),
        ([], f"data file {tmp_path}/passkey/train_1024.jsonl does not exist; fix data.sources[].path or make it "
             f"(python synthesize.py writes samples.jsonl; python evaluate.py task=passkey "
             f"export_training={tmp_path}/passkey/train_1024.jsonl"),
    ]
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, _ in cases]  # all at once: they are short
    for (args, message), proc in zip(cases, procs):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, stderr[-2000:])
        assert message in stderr, (args, stderr[-2000:])
        assert not (tmp_path / "train").exists() or not any((tmp_path / "train").rglob("*.ckpt")), args


@pytest.mark.slow
def test_a_multirun_keeps_its_jobs_apart_chains_stages_within_a_job_and_its_scores_are_collected(tmp_path):
    from safetensors.torch import load_file

    had_multirun = (ROOT / "multirun").exists()
    sweep = ["-m", "stage.max_steps=2", "stage.warmup_steps=1", "stage.lr=1e-3,3e-3", "sweep_name=lr"]
    for stage in ("tiny_1k", "tiny_2k"):
        done = _train(tmp_path, "-m", f"stage={stage}", *sweep[1:])
        assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "train" / "lr"
    jobs = sorted(p for p in root.iterdir() if p.is_dir())
    names = [f"stage.lr={lr},stage.max_steps=2,stage.warmup_steps=1" for lr in ("0.001", "0.003")]
    assert [j.name for j in jobs] == names and (root / "multirun.yaml").is_file()  # named by overrides, not stage=
    for job in jobs:
        for stage in ("tiny_1k", "tiny_2k"):
            assert (job / stage / "hf" / "model.safetensors").is_file() and (job / stage / "last.ckpt").is_file()
        assert not list(job.rglob("last-v*.ckpt"))
        assert f"starts from {job}/tiny_1k/hf" not in done.stderr  # never refused: each found its own predecessor
    a, b = (load_file(j / "tiny_2k" / "hf" / "model.safetensors") for j in jobs)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two runs, not one written twice
    assert not (tmp_path / "train" / "tiny_1k").exists() and (ROOT / "multirun").exists() == had_multirun

    env = {**os.environ, "SELFLONG_DATA": str(tmp_path)}
    collected = subprocess.run([sys.executable, "evaluate.py", "target=sweep", f"target.path={root}",
                                "target.stage=tiny_2k", "target.device=cpu", "task=passkey", "task.lengths=[256]",
                                "task.num_depths=2", "task.samples_per_cell=2", "progress=false",
                                f"out_dir={tmp_path / 'eval'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=600)
    assert collected.returncode == 0, collected.stderr[-3000:]
    table = (tmp_path / "eval" / "sweep.md").read_text()
    assert "| Variant | 256 |" in table and "| stage.lr=0.001 |" in table and "| stage.lr=0.003 |" in table
    summary = json.loads((tmp_path / "eval" / "sweep.json").read_text())
    assert set(summary["scores"]) == {"stage.lr=0.001", "stage.lr=0.003"}
    for job in jobs:
        assert (tmp_path / "eval" / job.name / "scores.json").is_file()
    heads = subprocess.run([sys.executable, "evaluate.py", "target=sweep", f"target.path={root}",
                            "target.stage=tiny_2k", "task=retrieval_heads", "task.length=256", "task.probes=2",
                            "task.reference='stage.lr=0.001'", f"task.niah_scores={tmp_path / 'eval' / 'sweep.json'}",
                            f"out_dir={tmp_path / 'heads'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert heads.returncode == 0, heads.stderr[-3000:]
    table = (tmp_path / "heads" / "heads_sweep.md").read_text()
    assert "| Variant | retrieval heads | recall vs stage.lr=0.001," in table and "NIAH 256 |" in table
    assert "| stage.lr=0.001 |" in table and "| stage.lr=0.003 |" in table


FSDP_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false"]


def _killed_inside_save(data_dir: Path, args: list[str], step: int) -> Path:
    """train.py with `args`, all its processes SIGKILLed while rank 0 is inside the checkpoint save of global step
    `step` (held there by tests/lightning_modules/pause_in_save.py); returns the stage folder."""
    stage, signal_file, log = data_dir / "train" / "tiny_1k", data_dir / "inside_the_save", data_dir / "killed.log"
    write_passkey(data_dir / "passkey" / "train_1024.jsonl", 1024, 60)
    pause = ["+callbacks.pause._target_=tests.lightning_modules.pause_in_save.PauseInSave",
             f"+callbacks.pause.step={step}", f"+callbacks.pause.signal_file={signal_file}"]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "train.py", *args, *pause], cwd=ROOT, env=_env(data_dir),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while not signal_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # every rank at once, as a preemption does
        except ProcessLookupError:
            pass
        proc.wait()
    assert signal_file.exists(), f"the run never reached the save of step {step}:\n{log.read_text()[-3000:]}"
    assert not (stage / "hf").exists()
    return stage


@pytest.mark.slow
def test_an_fsdp_run_killed_inside_a_checkpoint_save_resumes_from_the_save_before_to_the_same_loss(tmp_path):
    """SIGKILL (every rank) while the distributed checkpoint folder of step 2 is being written: its shards are written
    and meta.pt is open by then, so a last.ckpt rewritten in place would be a mix of steps 1 and 2, its meta.pt empty.
    (A file checkpoint is written whole by Lightning's fsspec transaction before it is moved into place.)"""
    args = ["stage.max_steps=3", "stage.checkpoint_every=1", *SMALL, *FSDP_CPU]
    whole = _train(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stage = _killed_inside_save(tmp_path / "cut", args, step=2)
    resumed = _train(tmp_path / "cut", *args, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {stage / 'last.ckpt'}" in resumed.stderr
    assert "note:" not in resumed.stderr  # the kill came before the renames: last.ckpt was whole
    assert _final_loss(resumed.stdout) == pytest.approx(_final_loss(whole.stdout), abs=1e-6)
    assert sorted(p.name for p in stage.glob("last*")) == ["last.ckpt"]  # the killed save's .tmp is gone
    assert torch.load(stage / "last.ckpt" / "meta.pt", weights_only=False)["global_step"] == 3
