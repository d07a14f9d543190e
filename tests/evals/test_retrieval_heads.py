"""The retrieval-head diagnostic: scores of hand-built attention patterns, recall on hand cases, and a run on a
random checkpoint (which has no retrieval head)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from evals.retrieval_heads import Probe, copy_hits, head_set, recall
from tests.conftest import ROOT


def test_a_head_scores_the_share_of_copy_steps_it_attends_to_the_copied_token():
    # tokens: 0-1 filler, 2-4 the needle "7 8 9", 5-6 filler, 7-9 the answer "7 8 9", 10 a token not in the needle
    ids = [50, 51, 7, 8, 9, 52, 53, 7, 8, 9, 60]
    probe = Probe(ids, needle=(2, 5), answer_start=7)
    s = len(ids)
    attention = np.zeros((2, 2, s, s))
    for t in range(7, 10):  # the row predicting token t is t - 1
        attention[0, 0, t - 1, t - 5] = 1.0  # always on the copied token: 7 -> 2, 8 -> 3, 9 -> 4
        attention[0, 1, t - 1, 0] = 1.0  # always on the first token
        attention[1, 0, t - 1, t - 5 if t == 7 else 6] = 1.0  # right once in three
        attention[1, 1, t - 1, 3] = 1.0  # always on the needle's "8": right when copying 8 only
    attention[:, :, 9, 1] = 1.0  # predicting token 10 (not in the needle): not a copy step whatever it does
    hits, steps = copy_hits(attention, probe)
    assert steps == 3
    np.testing.assert_allclose(hits / steps, [[1.0, 0.0], [1 / 3, 1 / 3]])
    assert head_set(hits / steps, 0.3) == {(0, 0), (1, 0), (1, 1)} and head_set(hits / steps, 0.5) == {(0, 0)}


def test_recall_is_the_share_of_the_reference_heads_found():
    assert recall({(1, 3), (0, 2)}, {(1, 3), (1, 1)}) == 0.5
    assert recall({(1, 3)}, {(1, 3)}) == 1.0 and recall(set(), {(0, 0)}) == 0.0
    assert recall({(0, 0)}, set()) is None


@pytest.mark.slow
def test_a_random_model_has_no_retrieval_head_and_the_report_is_written(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_modules.byte_tokenizer import byte_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=261, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    for name in ("a", "b"):
        LlamaForCausalLM(config).save_pretrained(tmp_path / name)
        byte_tokenizer().save_pretrained(tmp_path / name)
    env = {**os.environ, "SELFLONG_DATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "evaluate.py", "target=checkpoint", f"target.path={tmp_path / 'a'}",
                           "task=retrieval_heads", "task.length=512", "task.probes=4",
                           f"task.reference={tmp_path / 'b'}", f"out_dir={tmp_path / 'heads'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "heads" / "heads.json").read_text())
    assert np.asarray(result["scores"]).shape == (2, 4) and result["probes"] == 4
    assert result["heads"] == [] and result["reference_heads"] == [] and result["recall"] is None
    assert max(max(row) for row in result["scores"]) < 0.1
    assert "0 head(s) with retrieval score >= 0.1" in done.stdout
    assert (tmp_path / "heads" / "heatmap_heads.png").read_bytes().startswith(b"\x89PNG")
    refused = subprocess.run([sys.executable, "evaluate.py", "task=retrieval_heads", "target.tokenizer=x",
                              f"out_dir={tmp_path / 'no'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "use target=checkpoint" in refused.stderr and not (tmp_path / "no").exists()
