"""The synthesis quality report: exact numbers from a known samples file (new and older records), a valid PNG,
the command line, and `synthesize.py ... report=true` end to end."""

import json
import struct
import subprocess
import sys
from pathlib import Path

from evals.synthesis_report import main, png_beside, report
from tests.conftest import ROOT


def _doc(i: str, rank: int, position: int, tokens: int, cut: bool = False) -> dict:
    return {"id": i, "rank": rank, "position": position, "tokens": tokens, "cut": cut}


def _sample(sid: str, kind: str, n: int, target: int, doc_ids: list[str], answer: str, **prov) -> dict:
    return {"id": sid, "kind": kind, "messages": [{"role": "user", "content": "Document 1: t\nbody\n\nDo it."},
                                                  {"role": "assistant", "content": answer}],
            "target_tokens": target, "n_tokens": n, "doc_ids": doc_ids, "instruction": "Do it.",
            "provenance": {"llm": "m", "embedder": "e", "tokenizer": "t", "calls": 3, "qfs_depth": 0, **prov}}


SAMPLES = [
    # superseded below by a later line of the same id (a retried sample): must not count
    _sample("B", "long_input", 9999, 9999, ["z"], "old", task_type="qa"),
    _sample("A", "long_input", 2000, 2500, ["a", "b", "c"], "As Document 2 says, the answer is foo bar.",
            documents=[_doc("a", 1, 2, 500), _doc("b", 2, 1, 700, cut=True), _doc("c", 3, 3, 600)],
            task_type="qa", answer_tokens=40, verified=True),
    _sample("B", "long_input", 3000, 3500, ["a", "d", "a"], "A summary without any citation [1] at all.",
            documents=[_doc("a", 1, 1, 800), _doc("d", 4, 2, 900), _doc("a", 2, 3, 1300)],
            task_type="summarization", answer_tokens=60, verified=False),
    _sample("C", "long_input", 2200, 2500, ["e"], "Document 1 explains it."),  # an older record: no new fields
    _sample("D", "long_output", 3400, 3500, ["a"], "Document 7 of the manual: a long text written out here."),
]

EXPECTED = """\
| Distribution | n | min | median | mean | max |
|---|---|---|---|---|---|
| sample length (tokens) | 4 | 2000 | 2600 | 2650 | 3400 |
| target fill (n_tokens / target) | 4 | 0.8 | 0.87 | 0.88 | 0.97 |
| documents per sample | 4 | 1 | 2 | 2 | 3 |
| retrieval rank | 6 | 1 | 2 | 2.17 | 4 |
| position (Document i) | 6 | 1 | 2 | 2 | 3 |
| document tokens kept | 6 | 500 | 750 | 800 | 1300 |
| answer length (tokens) | 2 | 40 | 50 | 50 | 60 |
| answer length (words) | 4 | 4 | 8.5 | 8 | 11 |
| samples per distinct document | 5 | 1 | 1 | 1.4 | 3 |

| Count | value |
|---|---|
| samples | 4 |
| kind: long_input | 75.0% (3/4) |
| kind: long_output | 25.0% (1/4) |
| task type: qa | 25.0% (1/4) |
| task type: summarization | 25.0% (1/4) |
| task type: (not recorded) | 50.0% (2/4) |
| samples recording their documents (rank, position) | 50.0% (2/4) |
| document slots | 8 |
| distinct documents | 5 |
| slots repeating a document of the same sample | 12.5% (1/8) |
| documents cut to fit | 16.7% (1/6) |
| answers citing a document ("Document i") | 66.7% (2/3) |
| answers verified (of those checked) | 50.0% (1/2) |
"""


def _write(path: Path, records: list[dict], torn: bool = True) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records) + ('{"id": "torn", "kind"' if torn else "")
    path.write_text(text)
    return path


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0 and len(data) > 1000
    assert not list(path.parent.glob("*.partial.png"))


def test_report_table_numbers_are_exact_and_the_png_is_written(tmp_path, capsys):
    samples = _write(tmp_path / "samples.jsonl", SAMPLES)
    png = tmp_path / "out" / "report.png"
    table = report(samples, png)
    assert table.startswith(f"Quality report of 4 sample(s) in {samples}.\n\n")
    assert EXPECTED in table and table.endswith(f"\nHistograms: {png}\n")
    assert capsys.readouterr().out == table
    _assert_png(png)


def test_older_records_only_leave_the_new_rows_empty(tmp_path, capsys):
    table = report(_write(tmp_path / "old.jsonl", SAMPLES[3:], torn=False), tmp_path / "old.png")
    assert "| retrieval rank | 0 | - | - | - | - |" in table
    assert "| answer length (tokens) | 0 | - | - | - | - |" in table
    assert "| task type: (not recorded) | 100.0% (2/2) |" in table
    assert "| documents cut to fit | - (0/0) |" in table
    assert "| answers verified (of those checked) | - (0/0) |" in table
    _assert_png(tmp_path / "old.png")


def test_cli_reports_shards_together_and_names_a_missing_file(tmp_path, capsys):
    a = _write(tmp_path / "samples.shard0-of-2.jsonl", SAMPLES[:3])
    b = _write(tmp_path / "samples.shard1-of-2.jsonl", SAMPLES[3:])
    main([str(a), str(b), "--png", str(tmp_path / "both.png")])
    assert EXPECTED in capsys.readouterr().out
    _assert_png(tmp_path / "both.png")
    assert png_beside(a) == tmp_path / "report.shard0-of-2.png"
    assert png_beside(tmp_path / "x.jsonl") == tmp_path / "x.report.png"

    missing = tmp_path / "nowhere" / "samples.jsonl"
    done = subprocess.run([sys.executable, "-m", "evals.synthesis_report", str(missing)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and str(missing) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "nowhere").exists()


def test_synthesize_report_true_writes_the_png_and_prints_the_table(server, topics_index, tiny_tokenizer, tmp_path):
    """A real run (scripted server over HTTP, Chroma index) with report=true, then the finished run again: it makes
    nothing new and only reports."""
    from tests.test_synthesize_cli import _args

    out = tmp_path / "out"
    args = _args(server, topics_index, tiny_tokenizer, out, "synth.num_samples=4", "report=true")
    for run in range(2):
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (f"samples={4 if run == 0 else 0} rejected=0 already_done={0 if run == 0 else 4}"
                in done.stdout), done.stdout
        assert f"Quality report of 4 sample(s) in {out / 'samples.jsonl'}." in done.stdout
        assert "| documents per sample | 4 |" in done.stdout and "| samples | 4 |" in done.stdout
        assert "| kind: long_input | 100.0% (4/4) |" in done.stdout
        assert "| slots repeating a document of the same sample | 0.0% (0/" in done.stdout
        _assert_png(out / "report.png")
    print(done.stdout)
