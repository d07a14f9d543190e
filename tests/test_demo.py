"""`make demo` end to end, shortened (few samples and steps, a 5-document index): every step a user's demo
runs, in order, through the same Makefile recipe."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_a_short_demo_runs_the_whole_loop(tmp_path):
    demo = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("SELFLONG_LLM_URL", "MAKEFLAGS", "MAKELEVEL")}
    done = subprocess.run(
        ["make", "-o", ".venv/.selflong-installed", "demo", f"PY={sys.executable}", f"DEMO_DIR={demo}",
         "DEMO_SAMPLES=150", "DEMO_EVAL=5", "DEMO_INDEX=corpus.limit=5",
         "DEMO_STAGE1=stage.max_steps=4 stage.warmup_steps=1", "DEMO_STAGE2=stage.max_steps=2 stage.warmup_steps=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    out = done.stdout
    assert "Synthesis skipped: no endpoint configured" in out and "programmatic only" in out
    assert (demo / "passkey" / "train_512.jsonl").is_file() and (demo / "passkey" / "train_2048.jsonl").is_file()
    for run in ("demo_512", "theta_only", "demo_2k"):
        assert (demo / "train" / run / "hf" / "config.json").is_file(), run
        assert (demo / "eval" / run / "heatmap_passkey.png").is_file(), run
        assert f"| {run} | " in out, run
    assert "stage demo_2k: final loss" in out and "no training (max_steps=0)" in out
    assert f"checkpoints: {demo}/train/{{demo_512,demo_2k}}/hf" in out.strip().splitlines()[-1]
