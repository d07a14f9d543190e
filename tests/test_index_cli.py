"""index.py as a user runs it: a real process, real config, real exit codes."""

import subprocess
import sys

from tests.conftest import ROOT
from tests.servers import free_port


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "index.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_index_then_query_a_folder(tmp_path, server, minilm_tokenizer):
    docs = tmp_path / "notes"
    docs.mkdir()
    (docs / "tides.md").write_text("Tides rise and fall twice a day because the moon pulls the oceans.")
    (docs / "bees.txt").write_text("Honey bees dance to tell the hive where flowers with nectar are.")
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4\x00\x01")
    common = [
        "corpus=files", f"corpus.path={docs}", f"store.path={tmp_path / 'db'}", "embedder=openai",
        f"embedder.base_url={server.url}", "embedder.model=hash-embed", f"embedder.tokenizer={minilm_tokenizer}",
    ]
    first = _run(*common, "progress=false")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == first.stdout.strip().splitlines()[0]  # one summary line
    assert "indexed notes__hash-embed: documents=2 chunks=2 new=2 skipped=0 seconds=" in first.stdout
    assert "skipped 1 inputs" in first.stderr and "scan.pdf (extension .pdf" in first.stderr
    again = _run(*common, "progress=false")
    assert "new=0 skipped=2" in again.stdout and "already up to date" in again.stdout
    found = _run(*common, "query=where do honey bees dance", "top_k=2", "embedder.query_prefix=")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0] == "query: where do honey bees dance" and "bees.txt" in lines[1] and "tides.md" in lines[3]


def test_missing_corpus_path_exits_2_and_writes_nothing(tmp_path):
    result = _run("corpus=files", f"corpus.path={tmp_path / 'nope'}", f"store.path={tmp_path / 'db'}")
    assert result.returncode == 2
    assert f"corpus path {tmp_path / 'nope'} does not exist" in result.stderr
    assert not (tmp_path / "db").exists()


def test_query_without_an_index_exits_2(tmp_path):
    result = _run(f"store.path={tmp_path / 'db'}", "query=anything", "corpus.limit=1")
    assert result.returncode == 2 and "no index 'python_docs__all-MiniLM-L6-v2'" in result.stderr


def test_unknown_config_key_is_hydras_error(tmp_path):
    result = _run("no_such_key=1", f"store.path={tmp_path / 'db'}")
    assert result.returncode != 0 and "Could not override 'no_such_key'" in result.stderr
    assert not (tmp_path / "db").exists()


def test_index_and_query_through_a_chroma_server_as_through_the_embedded_store(tmp_path, server, minilm_tokenizer,
                                                                                chroma_server):
    docs = tmp_path / "notes"
    docs.mkdir()
    for i, topic in enumerate(["tides and the moon", "honey bees and flowers", "basalt from cooling lava",
                               "yeast in bread dough", "knights on a chess board"]):
        (docs / f"note{i}.md").write_text(f"A note about {topic}. " * 40)
    common = [
        "corpus=files", f"corpus.path={docs}", "embedder=openai", f"embedder.base_url={server.url}",
        "embedder.model=hash-embed", f"embedder.tokenizer={minilm_tokenizer}", "embedder.query_prefix=",
        "chunker.chunk_tokens=32", "chunker.overlap_tokens=4", "progress=false",
    ]
    embedded = [f"store.path={tmp_path / 'db'}"]
    remote = chroma_server.overrides(tmp_path / "shared" / "sidecar")
    for store in (embedded, remote):
        built = _run(*common, *store)
        assert built.returncode == 0, built.stderr
        assert "documents=5 chunks=" in built.stdout and "skipped=0" in built.stdout
    assert (tmp_path / "shared" / "sidecar" / "notes__hash-embed.sqlite").is_file()
    query = "query=what do honey bees look for"
    answers = [_run(*common, *store, query, "top_k=3") for store in (embedded, remote)]
    assert all(a.returncode == 0 for a in answers), [a.stderr for a in answers]
    assert "note1.md" in answers[0].stdout.splitlines()[1]
    assert answers[1].stdout == answers[0].stdout


def test_an_unreachable_chroma_server_exits_2_and_writes_nothing(tmp_path, server, minilm_tokenizer):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("Tides rise and fall twice a day.")
    port = free_port()
    result = _run("corpus=files", f"corpus.path={tmp_path / 'notes'}", "embedder=openai",
                  f"embedder.base_url={server.url}", "embedder.model=hash-embed",
                  f"embedder.tokenizer={minilm_tokenizer}", "store=chroma_server", f"store.port={port}",
                  f"store.sidecar={tmp_path / 'sidecar'}", "progress=false")
    assert result.returncode == 2, result.stderr
    assert f"the Chroma server at http://127.0.0.1:{port} is unreachable" in result.stderr
    assert "chroma run" in result.stderr
    assert not (tmp_path / "sidecar").exists()
