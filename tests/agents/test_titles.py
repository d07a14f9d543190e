"""Titles come from the data, never from where a document is stored (issue 15, finding 1).

Every reader: .txt (none), .md (front matter or first `# Heading`), .jsonl and .parquet (the `title_field`, when
present), python_docs (topic keys and module names); the URL stays in `meta["url"]`; a path-like value is no title.
"""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from agents.corpus import FileCorpus, PythonDocsCorpus, markdown_title, title_or_empty
from agents.errors import InputError
from tests.conftest import ROOT


def _no_location_in_titles(docs, root):
    """No title holds the corpus folder, a file's name or stem, a source reference or anything path-like."""
    names = {p.name for p in root.rglob("*")} | {p.stem for p in root.rglob("*") if p.is_file()}
    for d in docs:
        title = d.meta.get("title", "")
        assert title == title_or_empty(title), (d.source, title)
        assert str(root) not in title and root.name not in title and d.source not in title, (d.source, title)
        assert title not in names, (d.source, title)
        assert not re.search(r"#\d+$|:\d+$", title), (d.source, title)


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "CC-MAIN-2024-10"
    root.mkdir()
    (root / "plain.txt").write_text("Plain text about rivers.\nSecond line.\n")
    (root / "guide.md").write_text("Some intro.\n\n# The River Guide #\n\nBody.\n\n# Another H1\n")
    (root / "front.md").write_text('---\nauthor: x\ntitle: "Front Matter Title"\n---\n\n# Heading\n\nBody text.\n')
    (root / "fenced.md").write_text("```\n# not a heading\n```\n## Level two\n\nNo level-one heading here.\n")
    (root / "000_00000.md").write_text("Markdown without any heading.\n")
    lines = [
        {"text": "Titled jsonl record.", "title": "  A  Jsonl\nTitle ", "url": "https://example.org/a", "n": 3},
        {"text": "Untitled jsonl record.", "url": "https://example.org/b"},
        {"text": "Path as a title.", "title": f"{root}/000_00000.parquet#39"},
        {"text": "URL as a title.", "title": "https://example.org/c"},
        {"text": "Number as a title.", "title": 7},
        {"text": "Empty title.", "title": "   "},
    ]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    pq.write_table(pa.table({"text": ["Untitled parquet row.", "Second untitled row."],
                             "url": ["https://example.org/p0", None]}), root / "000_00000.parquet")
    pq.write_table(pa.table({"text": ["Titled parquet row.", "Row with a null title.", "Row with a file name."],
                             "title": ["Parquet Title", None, "part-00001.parquet"]}), root / "titled.parquet")
    return root


def test_every_file_reader_takes_titles_from_the_data_only(mixed):
    docs = list(FileCorpus(str(mixed)))
    assert len(docs) == 16
    titles = {(d.source.rsplit("/", 1)[-1]): d.meta.get("title") for d in docs}
    assert titles == {
        "plain.txt": None,  # .txt: no title, never its name
        "guide.md": "The River Guide",
        "front.md": "Front Matter Title",
        "fenced.md": None,
        "000_00000.md": None,
        "rows.jsonl:1": "A Jsonl Title",  # whitespace collapsed
        "rows.jsonl:2": None,
        "rows.jsonl:3": None,  # a path is refused
        "rows.jsonl:4": None,  # so is a URL
        "rows.jsonl:5": None,
        "rows.jsonl:6": None,
        "000_00000.parquet#0": None,  # no title column
        "000_00000.parquet#1": None,
        "titled.parquet#0": "Parquet Title",
        "titled.parquet#1": None,
        "titled.parquet#2": None,  # a file name is refused
    }
    _no_location_in_titles(docs, mixed)


def test_urls_stay_in_meta(mixed):
    docs = {d.source.rsplit("/", 1)[-1]: d for d in FileCorpus(str(mixed))}
    assert docs["rows.jsonl:1"].meta == {"title": "A Jsonl Title", "url": "https://example.org/a", "n": 3}
    assert docs["rows.jsonl:2"].meta == {"url": "https://example.org/b"}
    assert docs["000_00000.parquet#0"].meta == {"row": 0, "url": "https://example.org/p0"}
    assert docs["000_00000.parquet#1"].meta == {"row": 1}
    assert docs["titled.parquet#0"].meta == {"row": 0, "title": "Parquet Title"}


def test_title_and_url_fields_are_configurable(tmp_path):
    rows = [{"body": "First body.", "headline": "Headline One", "title": "ignored", "link": "http://x/1"}]
    (tmp_path / "r.jsonl").write_text(json.dumps(rows[0]) + "\n")
    pq.write_table(pa.table({"body": ["Parquet body."], "headline": ["Headline Two"], "link": ["http://x/2"]}),
                   tmp_path / "r.parquet")
    docs = list(FileCorpus(str(tmp_path), text_field="body", title_field="headline", url_field="link"))
    assert [d.meta for d in docs] == [{"title": "Headline One", "url": "http://x/1"},
                                      {"row": 0, "title": "Headline Two", "url": "http://x/2"}]
    off = list(FileCorpus(str(tmp_path), text_field="body", title_field=None, url_field=None))
    assert [d.meta for d in off] == [{"headline": "Headline One", "link": "http://x/1"}, {"row": 0}]


@pytest.mark.parametrize("kw,key", [({"title_field": "text"}, "corpus.title_field"),
                                    ({"url_field": "text"}, "corpus.url_field"),
                                    ({"title_field": "u", "url_field": "u"}, "corpus.title_field"),
                                    ({"title_field": ""}, "corpus.title_field")])
def test_bad_title_settings_are_named(tmp_path, kw, key):
    with pytest.raises(InputError, match=re.escape(key)):
        FileCorpus(str(tmp_path), **kw)


def test_streamed_markdown_keeps_its_title_and_streamed_text_has_none(tmp_path):
    body = "".join(f"line {i} of a long document\n" for i in range(5000))
    (tmp_path / "big.md").write_text(f"# Big Markdown\n\n{body}")
    (tmp_path / "big.txt").write_text(body)
    streamed = {d.path.name: d for d in FileCorpus(str(tmp_path), stream_above_bytes=1000)}
    whole = {d.source.rsplit("/", 1)[-1]: d for d in FileCorpus(str(tmp_path))}
    assert streamed["big.md"].text is None and streamed["big.md"].meta["title"] == "Big Markdown"
    assert whole["big.md"].meta == {"title": "Big Markdown"} and whole["big.md"].id == streamed["big.md"].id
    assert "title" not in streamed["big.txt"].meta and whole["big.txt"].meta == {}


@pytest.mark.parametrize("value", [
    "/data/crawl/CC-MAIN-2024-10/000_00000.parquet#39", "000_00000.parquet#39", "CC-MAIN-2024-10/000_00000.parquet",
    "shard.jsonl:12", "notes.txt", "README.md", "~/docs/my notes.txt", "./a", "../b/c", "C:\\data\\a.txt",
    "https://en.wikipedia.org/wiki/River", "", "   ", None, 3,
])
def test_locations_are_no_titles(value):
    assert title_or_empty(value) == ""


@pytest.mark.parametrize("value", ["AC/DC", "TCP/IP explained", "Node.js", "Python 3.12", "assert", "os"])
def test_ordinary_titles_are_kept(value):
    assert title_or_empty(value) == value


def test_markdown_title_rules():
    assert markdown_title("# Title\n\n# Second\n") == "Title"
    assert markdown_title("   # Indented up to three  ###\n") == "Indented up to three"
    assert markdown_title("    # indented code\n#nospace\n## H2\n") == ""
    assert markdown_title("---\ntitle: 'Quoted'\n---\n# H1\n") == "Quoted"
    assert markdown_title("---\nlayout: post\n---\n# From the heading\n") == "From the heading"
    assert markdown_title("# /var/data/file.md\n") == ""


def test_python_docs_titles_are_keys_and_module_names():
    topics = list(PythonDocsCorpus(docstrings=False))
    assert all(d.meta["title"] == d.source.removeprefix("pydoc:") for d in topics)
    modules = list(PythonDocsCorpus(topics=False, limit=5))
    assert all(d.meta["title"] == d.source.removeprefix("module:") for d in modules)
    for d in topics + modules:
        assert d.meta["title"] and title_or_empty(d.meta["title"]) == d.meta["title"]


def _files_corpus(*overrides: str) -> FileCorpus:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return instantiate(compose(config_name="index", overrides=["corpus=files", *overrides]).corpus)


def test_files_config_passes_title_and_url_fields(tmp_path):
    corpus = _files_corpus(f"corpus.path={tmp_path}")
    assert (corpus.title_field, corpus.url_field) == ("title", "url")
    corpus = _files_corpus(f"corpus.path={tmp_path}", "corpus.title_field=headline", "corpus.url_field=null")
    assert (corpus.title_field, corpus.url_field) == ("headline", None)
