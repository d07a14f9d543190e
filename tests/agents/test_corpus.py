import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agents.corpus import Document, FileCorpus, PythonDocsCorpus, content_id
from agents.errors import InputError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha document about rivers and lakes.\n")
    (tmp_path / "b.md").write_text("# Beta\n\nMarkdown about mountains.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("Gamma, in a subfolder.")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("never read")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02PK\x00\x00" * 100)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n\t\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    lines = [
        json.dumps({"text": "Delta from jsonl.", "url": "http://x/1", "tags": ["a"]}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": "   "}),
        "",
        json.dumps({"text": "Epsilon from jsonl."}),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_folder_reads_text_md_jsonl_and_names_what_it_skips(folder):
    corpus = FileCorpus(str(folder))
    docs = list(corpus)
    texts = sorted(d.text for d in docs)
    assert texts == sorted([
        "Alpha document about rivers and lakes.\n",
        "# Beta\n\nMarkdown about mountains.\n",
        "Gamma, in a subfolder.",
        "Delta from jsonl.",
        "Epsilon from jsonl.",
    ])
    for d in docs:
        assert d.id == content_id(d.text)
    delta = next(d for d in docs if d.text.startswith("Delta"))
    assert delta.meta == {"url": "http://x/1"} and delta.source.endswith("d.jsonl:1")
    reasons = {src.rsplit("/", 1)[-1]: why for src, why in corpus.skipped}
    assert reasons["binary.txt"].startswith("binary")
    assert reasons["latin1.txt"].startswith("not UTF-8")
    assert reasons["empty.txt"] == "empty document"
    assert "extension .png" in reasons["image.png"]
    assert reasons["d.jsonl:2"].startswith("invalid JSON")
    assert "no string field 'text'" in reasons["d.jsonl:3"]
    assert reasons["d.jsonl:4"] == "empty document"
    assert len(corpus.skipped) == 7
    assert corpus.name == folder.name


def test_jsonl_text_field_is_configurable(folder):
    docs = list(FileCorpus(str(folder / "d.jsonl"), text_field="body"))
    assert [d.text for d in docs] == ["no text field"]


def test_parquet_rows_are_documents(tmp_path):
    table = pa.table({"content": ["first row text", "", "third row text"], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "rows.parquet")
    corpus = FileCorpus(str(tmp_path), text_field="content")
    docs = list(corpus)
    assert [d.text for d in docs] == ["first row text", "third row text"]
    assert docs[1].source.endswith("rows.parquet#2")
    assert corpus.skipped and corpus.skipped[0][1] == "empty document"
    wrong = FileCorpus(str(tmp_path), text_field="text")
    assert list(wrong) == []
    assert "no column 'text'" in wrong.skipped[0][1] and "content" in wrong.skipped[0][1]


def test_missing_path_names_it(tmp_path):
    with pytest.raises(InputError, match=r"corpus path .*nowhere does not exist"):
        list(FileCorpus(str(tmp_path / "nowhere")))


def test_big_file_is_streamed_with_the_same_id(tmp_path):
    text = "".join(f"line {i}: ünïcode text that repeats\n" for i in range(20000))
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    (doc,) = FileCorpus(str(path), stream_above_bytes=1000)
    assert doc.text is None and doc.path == path
    assert doc.id == content_id(text)
    pieces = list(doc.blocks(block_chars=4096))
    assert len(pieces) > 10 and "".join(pieces) == text
    (small,) = FileCorpus(str(path))
    assert small.text == text and small.id == doc.id


def test_streamed_file_that_is_not_utf8_is_skipped(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n" * 5000 + b"\xff\xfe bad bytes")
    corpus = FileCorpus(str(tmp_path), stream_above_bytes=100)
    assert list(corpus) == []
    assert "not UTF-8 text (byte 50000)" in corpus.skipped[0][1]


def test_python_docs_is_real_prose_with_stable_ids():
    topics = list(PythonDocsCorpus(docstrings=False))
    assert len(topics) > 50
    by_title = {d.meta["title"]: d for d in topics}
    assert "assert" in by_title["assert"].text
    again = {d.id for d in PythonDocsCorpus(docstrings=False)}
    assert again == {d.id for d in topics}
    modules = list(PythonDocsCorpus(topics=False, limit=5))
    assert len(modules) == 5 and all(d.source.startswith("module:") for d in modules)
    assert all(isinstance(d, Document) and len(d.text) >= 200 for d in modules)
