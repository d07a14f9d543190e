"""evaluate.py as a user runs it, against the scripted OpenAI-compatible server on 127.0.0.1 (the real
`openai` client over real HTTP) and against a tiny checkpoint under `transformers serve`."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.servers import free_port

SMALL = ["task=passkey", "task.lengths=[256,512]", "task.num_depths=3", "task.samples_per_cell=2", "progress=false"]


def _evaluate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELFLONG_DATA": "/nonexistent-data-dir"}
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _endpoint(server, tokenizer: str, out: Path) -> list[str]:
    return [f"target.base_url={server.url}", "target.model=scripted", f"target.tokenizer={tokenizer}",
            f"out_dir={out}"]


def _scores(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text())


def test_a_reader_that_finds_the_needle_scores_100_and_one_that_does_not_scores_0(server, tiny_tokenizer, tmp_path):
    right = _evaluate(*SMALL, *_endpoint(server, tiny_tokenizer, tmp_path / "right"))
    assert right.returncode == 0, right.stderr[-3000:]
    scores = _scores(tmp_path / "right")
    assert scores["average"] == 100.0 and scores["samples"] == 12 and scores["api"] == "completions"
    assert scores["scores"] == {"passkey": {"256": 100.0, "512": 100.0}}
    assert server.control.completion_requests == 12
    assert "| passkey | 100.0 | 100.0 |" in right.stdout
    png = (tmp_path / "right" / "heatmap_passkey.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "right" / "heatmap_passkey.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    for name in ("config.yaml", "predictions.jsonl", "scores.md", "scores.csv", "cells.csv"):
        assert (tmp_path / "right" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "right" / "predictions.jsonl").read_text().splitlines()]
    assert {r["length"] for r in rows} == {256, 512} and all(r["score"] == 1.0 for r in rows)
    assert all(len(r["input_hash"]) == 32 and r["answers"][0] in r["prediction"] for r in rows)

    server.control.answer_mode = "wrong"
    wrong = _evaluate(*SMALL, *_endpoint(server, tiny_tokenizer, tmp_path / "wrong"))
    assert wrong.returncode == 0, wrong.stderr[-3000:]
    assert _scores(tmp_path / "wrong")["average"] == 0.0


def test_completions_carry_the_chat_template_and_answer_prefix_and_chat_sends_the_task_text(
        server, tiny_tokenizer, tmp_path):
    server.control.record_bodies = True
    done = _evaluate(*SMALL, "task.lengths=[256]", *_endpoint(server, tiny_tokenizer, tmp_path / "c"))
    assert done.returncode == 0, done.stderr[-3000:]
    body = server.control.bodies[0]
    assert body["prompt"].startswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert re.search(r"\nWhat is the secret key for (\w+)\?<\|eot_id\|><\|start_header_id\|>assistant"
                     r"<\|end_header_id\|>\n\nThe secret key for \1 is$", body["prompt"]), body["prompt"][-200:]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 8
    server.control.bodies.clear()
    chat = _evaluate(*SMALL, "task.lengths=[256]", "target.api=chat",
                     *_endpoint(server, tiny_tokenizer, tmp_path / "h"))
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert _scores(tmp_path / "h")["api"] == "chat" and _scores(tmp_path / "h")["average"] == 100.0
    assert "api: chat" in (tmp_path / "h" / "scores.md").read_text()
    message = server.control.bodies[0]["messages"]
    assert len(message) == 1 and message[0]["role"] == "user" and "<|start_header_id|>" not in message[0]["content"]


def test_an_interrupted_run_resumes_and_recomputes_nothing(server, tiny_tokenizer, tmp_path):
    args = [*SMALL, *_endpoint(server, tiny_tokenizer, tmp_path / "run")]
    first = _evaluate(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert server.control.completion_requests == 12
    again = _evaluate(*args)
    assert again.returncode == 0 and server.control.completion_requests == 12  # nothing sent twice
    # a kill mid-run: the last three rows never landed and the fourth-last was cut mid-line
    predictions = tmp_path / "run" / "predictions.jsonl"
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:-4]) + lines[-4][:25])
    (tmp_path / "run" / "scores.json").unlink()
    resumed = _evaluate(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert server.control.completion_requests == 16  # exactly the four missing samples
    assert _scores(tmp_path / "run")["samples"] == 12 and _scores(tmp_path / "run")["average"] == 100.0
    # the same folder with other settings is refused, not mixed: another seed, another haystack corpus
    for change in ("seed=7", "corpus.limit=5"):
        other = _evaluate(*args, change)
        assert other.returncode == 2 and "holds a run with other settings" in other.stderr, change
    # a scored row whose prompt is not the one this run makes (its folder was written by other settings), in a
    # cell that is regenerated because one of its samples is missing
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    first = rows[0]
    same_cell = next(r for r in rows[1:] if (r["length"], r["depth"]) == (first["length"], first["depth"]))
    kept = [{**first, "input_hash": "0" * 32}] + [r for r in rows[1:] if r is not same_cell]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in kept))
    stale = _evaluate(*args)
    assert stale.returncode == 2 and f"holds a different prompt for {first['id']}" in stale.stderr


def test_bad_input_exits_2_naming_what_to_fix_and_writes_no_results(server, tiny_tokenizer, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    endpoint = _endpoint(server, tiny_tokenizer, tmp_path / "x")[:3]
    cases = [
        ([*SMALL, f"target.base_url={nowhere}", "target.model=m", f"target.tokenizer={tiny_tokenizer}"],
         f"endpoint {nowhere} is unreachable"),
        ([*SMALL, "target=checkpoint", f"target.path={bare}"], "tokenizer_config.json missing"),
        ([*SMALL, "target=checkpoint", f"target.path={tmp_path / 'none'}"],
         "config.json, tokenizer_config.json missing"),
        (["task=ruler", "task.lengths=[1024]", "task.qa_files.qa_1=/no/such/squad.json", *endpoint],
         "QA file /no/such/squad.json (task.qa_files.qa_1) does not exist"),
        (["task=needles", *endpoint],
         "unknown task 'needles': choose one of niah, passkey, pregenerated, retrieval_heads"),
        ([*SMALL, *endpoint, "target.max_model_len=128"], "nothing to evaluate: length 256: above the target's 128"),
        (["task=pregenerated", f"task.path={tmp_path / 'missing'}", *endpoint], "no RULER-format JSONL at"),
        ([*SMALL, *endpoint[1:], f"target.base_url={server.url[:-3]}"], "/models answered HTTP 404: check "
                                                                          "target.base_url (an OpenAI-compatible"),
        ([*SMALL, *endpoint, "target.max_in_flight=0"], "target.max_in_flight must be at least 1"),
        (["task=niah", "task.lengths=[512]", "corpus=files", f"corpus.path={bare}", "corpus.extensions=[.md]",
          *endpoint], "the haystack corpus has no text"),
        (["task=pregenerated", f"task.path={tmp_path}", "target.api=chat", *endpoint],
         "task=pregenerated sends prompts already rendered"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        done = _evaluate(*args, f"out_dir={out}")
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert message in done.stderr, (args, done.stderr[-2000:])
        assert not out.exists(), args


def test_cells_longer_than_the_target_are_skipped_and_listed_unless_allowed(server, tiny_tokenizer, tmp_path):
    args = [*SMALL, *_endpoint(server, tiny_tokenizer, tmp_path / "cut")[:3], "target.max_model_len=300"]
    cut = _evaluate(*args, f"out_dir={tmp_path / 'cut'}")
    assert cut.returncode == 0, cut.stderr[-2000:]
    scores = _scores(tmp_path / "cut")
    assert scores["scores"] == {"passkey": {"256": 100.0}} and "length 512" in scores["skipped"]
    assert "Skipped:" in (tmp_path / "cut" / "scores.md").read_text()
    longer = _evaluate(*args, "target.allow_longer=true", f"out_dir={tmp_path / 'all'}")
    assert longer.returncode == 0 and set(_scores(tmp_path / "all")["scores"]["passkey"]) == {"256", "512"}


@pytest.mark.slow
def test_a_checkpoint_is_served_by_transformers_serve_evaluated_and_stopped(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_modules.byte_tokenizer import byte_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=261, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    byte_tokenizer().save_pretrained(tmp_path / "hf")
    out = tmp_path / "eval"
    done = _evaluate(*SMALL, "target=checkpoint", f"target.path={tmp_path / 'hf'}", "target.device=cpu",
                     f"out_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    scores = _scores(out)
    assert scores["samples"] == 12 and scores["model"] == f"{tmp_path.name}/hf" and 0 <= scores["average"] <= 100
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["prediction"], str) for r in rows)
    assert (out / "heatmap_passkey.png").is_file()
    assert not _servers(), "the transformers serve process outlived the run"
    # Ctrl-C, a scheduler's SIGTERM, or SIGKILL while the server is up: the run ends and takes its server along
    env = {**os.environ, "SELFLONG_DATA": "/nonexistent-data-dir"}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / f"interrupted-{sig.name}"
        proc = subprocess.Popen([sys.executable, "evaluate.py", *SMALL, "task.lengths=[4096]", "target=checkpoint",
                                 "target.allow_longer=true", f"target.path={tmp_path / 'hf'}", "target.device=cpu",
                                 f"out_dir={out}"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (out / "run.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert _servers(), "the server should be up by the time the run folder exists"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while _servers() and time.time() < deadline:
            time.sleep(0.1)
        assert proc.returncode != 0 and not _servers(), sig.name


def _servers() -> list[str]:
    """Command lines of live `transformers serve` processes."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "transformers.cli" in cmd and " serve " in cmd:
                found.append(cmd)
    return found


def test_ruler_end_to_end_scores_100_for_a_perfect_reader_and_counts_the_tasks_it_ran(server, tiny_tokenizer,
                                                                                      tmp_path):
    from evals.ruler import TASKS
    from tests.evals.qa_data import QA_ANSWERS, write_qa_files

    qa = write_qa_files(tmp_path)
    server.control.qa_answers.update(QA_ANSWERS)
    args = ["task=ruler", "task.lengths=[2048]", "task.num_samples=2", "corpus.docstrings=false", "progress=false"]
    full = _evaluate(*args, f"task.qa_files.qa_1={qa['qa_1']}", f"task.qa_files.qa_2={qa['qa_2']}",
                     *_endpoint(server, tiny_tokenizer, tmp_path / "all"))
    assert full.returncode == 0, full.stderr[-3000:]
    scores = _scores(tmp_path / "all")
    assert scores["tasks_counted"] == 13 and set(scores["scores"]) == set(TASKS)
    assert scores["average"] == 100.0 and scores["length_means"] == {"2048": 100.0}
    table = (tmp_path / "all" / "scores.md").read_text()
    assert "| Model | 2k | Avg |" in table and "| scripted | 100.0 | 100.0 |" in table
    assert "| **Average (13 tasks)** | **100.0** |" in table

    no_qa = _evaluate(*args, *_endpoint(server, tiny_tokenizer, tmp_path / "no_qa"))
    assert no_qa.returncode == 0, no_qa.stderr[-3000:]
    scores = _scores(tmp_path / "no_qa")
    assert scores["tasks_counted"] == 11 and set(scores["skipped"]) == {"qa_1", "qa_2"}
    assert "Average over 11 task(s)." in no_qa.stdout and "qa_1: no QA file" in no_qa.stdout


def test_pregenerated_ruler_jsonl_is_scored_as_it_is(server, tiny_tokenizer, tmp_path):
    from evals.haystack import passkey_haystack
    from evals.prompting import PromptFormat
    from evals.ruler import generate

    fmt = PromptFormat.from_folder(tiny_tokenizer)
    folder = tmp_path / "RULER-llama3-1M"
    # the authors' layout (`<task>_<length>/validation.jsonl`) and RULER's own (`<length>/data/<task>/...`, where
    # `index` is the answer's character position and `outputs` holds the answers)
    for task, path in (("niah_single_1", "niah_single_1_1k"), ("vt", "1024/data/vt")):
        (folder / path).mkdir(parents=True)
        rows = [{"index": s.user.find(s.answers[0]), "input": s.prompt[: len(s.prompt) - len(s.answer_prefix)],
                 "answers" if task == "vt" else "outputs": s.answers, "answer_prefix": s.answer_prefix,
                 "length": s.n_tokens} for s in generate(task, fmt, 1024, 3, essay=passkey_haystack("eval"))]
        (folder / path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server.control.record_bodies = True
    done = _evaluate("task=pregenerated", f"task.path={folder}", "progress=false",
                     *_endpoint(server, tiny_tokenizer, tmp_path / "scored"))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = _scores(tmp_path / "scored")
    assert scores["scores"] == {"niah_single_1": {"1024": 100.0}, "vt": {"1024": 100.0}} and scores["samples"] == 6
    sent = {b["prompt"] for b in server.control.bodies}
    assert {r["input"] + r["answer_prefix"] for r in rows} <= sent  # sent as written, not regenerated
    for text in ('{"input": "x", "answers": ["y"]}\n{"prompt": "no input"}\n', '{"input": "x", "answers": ["y"]}\n'
                 '{"input": "x", "answers": []}\n'):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        refused = _evaluate("task=pregenerated", f"task.path={bad}", *_endpoint(server, tiny_tokenizer, tmp_path / "b"))
        assert refused.returncode == 2 and f"{bad}:2 is not a RULER-format record" in refused.stderr
        assert not (tmp_path / "b").exists()
