"""The kernels as a GPU would build them, checked on CPU: every launch a real bf16-mixed training step makes
(flash, and the ring's blocks) compiled for sm_90 with its recorded dtypes and Triton's launch-time
specialization, with each autotune configuration, at the step's head dim and at 64 and 128 (Llama's).
Each must compile, pipeline its loops (async copies of the K/V or Q/dO tiles of both the full and the
masked loop) and use no spill memory (ptxas -v)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# async copies at num_stages=2: (full loop + masked loop) x two tiles, each a copy per stage in flight
MIN_ASYNC_COPIES = 4


@pytest.fixture(scope="module")
def reports(bf16_flash_step, tmp_path_factory):
    launches = bf16_flash_step["bf16"][1] + bf16_flash_step["ring_bf16"][1]
    path = tmp_path_factory.mktemp("launches") / "launches.json"
    path.write_text(json.dumps(launches))
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "tests/kernels/compile_check.py", str(path), "--head-dims", "64,128"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_every_recorded_launch_compiles_for_hopper_pipelined_and_without_spills(reports):
    kernels = {r["kernel"] for r in reports}
    assert kernels == {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}
    assert {r["head_dim"] for r in reports} == {64, 128}
    assert {r["types"].get("O") for r in reports if r["kernel"] == "_fwd_kernel"} == {"*bf16", "*fp32"}
    failed = [r for r in reports if not r["ok"]]
    assert not failed, failed
    not_pipelined = [r for r in reports if r["async_copies"] < MIN_ASYNC_COPIES]
    assert not not_pipelined, not_pipelined
    spilling = [r for r in reports if r["spill_bytes"]]
    assert not spilling, spilling
