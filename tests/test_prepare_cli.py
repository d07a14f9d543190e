"""prepare.py as a user runs it ahead of training: train.py with the same overrides maps what it built."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_passkey


def _run(script: str, data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env={**os.environ, "SELFLONG_DATA": str(data_dir)},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_prepare_ahead_then_train_reuses_it_and_bad_data_is_named(tmp_path):
    write_passkey(tmp_path / "passkey" / "train_1024.jsonl", 1024, 60)
    prepared = _run("prepare.py", tmp_path, "data.num_proc=2")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "60 samples (0 longer than 1024, dropped)" in prepared.stdout and "fill" in prepared.stdout
    trained = _run("train.py", tmp_path, "stage.max_steps=2", "stage.warmup_steps=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    builds = (tmp_path / "prepared" / "builds.jsonl").read_text().splitlines()
    assert len(builds) == 1 and json.loads(builds[0])["num_proc"] == 2  # train.py tokenized nothing
    other = _run("prepare.py", tmp_path, "seed=1")  # a changed setting is another preparation
    assert other.returncode == 0 and len((tmp_path / "prepared" / "builds.jsonl").read_text().splitlines()) == 2

    bad = tmp_path / "bad"
    (bad / "passkey").mkdir(parents=True)
    (bad / "passkey" / "train_1024.jsonl").write_text('{"messages": []}\n')
    failed = _run("prepare.py", bad)
    assert failed.returncode == 2
    assert f"error: {bad}/passkey/train_1024.jsonl:1: every message needs 'role' and 'content'" in failed.stderr
    assert [p.name for p in (bad / "prepared").iterdir() if not p.name.endswith(".lock")] == []
