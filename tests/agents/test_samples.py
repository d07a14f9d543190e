"""The samples file and its index: reopening reads the small index, never the samples, and survives kills
between the two appends, torn lines and a missing index."""

import json

from agents.samples import JsonlWriter


def _write(path, n, start=0):
    w = JsonlWriter(path, keep=("index", "instruction"))
    for i in range(start, start + n):
        w.write({"id": f"s{i}", "index": i, "instruction": f"do {i}", "messages": [{"content": "x" * 1000}]})
    w.close()


def test_reopening_reads_the_index_not_the_samples(tmp_path):
    path = tmp_path / "samples.jsonl"
    _write(path, 5)
    data = path.read_bytes()
    first = data.index(b"\n") + 1
    path.write_bytes(b"#" * (first - 1) + b"\n" + data[first:])  # the first sample unreadable, same length
    w = JsonlWriter(path, keep=("index", "instruction"))
    assert [r["id"] for r in w.records] == [f"s{i}" for i in range(5)]
    assert w.records[3]["instruction"] == "do 3" and w.ids == {f"s{i}" for i in range(5)}
    w.write({"id": "s2", "index": 2})  # already there: skipped
    w.close()
    assert path.read_bytes().count(b"\n") == 5


def test_an_index_behind_ahead_of_or_without_its_file_is_repaired(tmp_path):
    path = tmp_path / "samples.jsonl"
    _write(path, 3)
    with open(path, "a") as f:  # killed after the sample line, before its index line
        f.write(json.dumps({"id": "s3", "index": 3, "instruction": "do 3"}) + "\n")
        f.write('{"id": "s4", "ind')  # and a torn line after it
    w = JsonlWriter(path, keep=("index", "instruction"))
    assert [r["id"] for r in w.records] == ["s0", "s1", "s2", "s3"]
    w.close()
    index = (tmp_path / "samples.jsonl.index").read_text().splitlines()
    assert len(index) == 4 and json.loads(index[-1])["end"] == path.stat().st_size
    (tmp_path / "samples.jsonl.index").unlink()  # a run from before the index existed
    _write(path, 2, start=4)
    assert [r["index"] for r in JsonlWriter(path, keep=("index",)).records] == [0, 1, 2, 3, 4, 5]
    path.write_bytes(path.read_bytes()[: path.read_bytes().index(b"\n") + 1])  # samples cut back to one
    assert [r["id"] for r in JsonlWriter(path).records] == ["s0"]


def test_the_near_duplicate_check_sees_only_lower_indices():
    from agents.instructions import InstructionDeduper

    d = InstructionDeduper(0.7)
    d.add("write a guide to python decorators and how web frameworks use them", 5)
    twin = "write a guide to python decorators and how web frameworks apply them"
    assert d.similar(twin, below=6) >= 0.5 and d.similar(twin, below=5) == 0.0  # index 5 is not below 5
    assert d.similar("explain the difference between processes and threads in the standard library") == 0.0
