"""No storage location in a sample (issue 15, finding 1): a parquet corpus without a title column, indexed into a real
Chroma index on disk, gives long-input (and retrieving ACER) samples whose documents are headed "Document i", with
neither the file's path, its folder, its name nor a "#<row>" reference anywhere in the sample; a titled JSONL corpus
gives "Document i: <title>"."""

import asyncio
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydoc_data.topics import topics

from agents.chunker import TokenChunker
from agents.corpus import FileCorpus, content_id
from agents.embedder import OpenAIEmbedder
from agents.indexer import index_corpus
from agents.store import ChromaStore
from graphs import acer, synthesis
from graphs.context import SynthContext
from graphs.resources import resources

# pydoc topics of moderate size: real prose the tiny tokenizer was trained on
KEYS = sorted(k for k, v in topics.items() if 300 <= len(v.strip()) <= 20000)
HEADER = re.compile(r"^Document (\d+)(.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, embed_server, minilm_tokenizer):
    """Two corpora indexed into Chroma on disk: (store path, embedder spec, parquet file, {doc id: JSONL title})."""
    embed_server.control.reset()
    root = tmp_path_factory.mktemp("titles")
    crawl = root / "crawl" / "CC-MAIN-2024-10"
    crawl.mkdir(parents=True)
    parquet = crawl / "000_00000.parquet"
    untitled = KEYS[0::2]
    pq.write_table(pa.table({"text": [topics[k].strip() for k in untitled],
                             "url": [f"https://docs.python.org/3/reference/{k}.html" for k in untitled]}), parquet)
    titled_dir = root / "titled"
    titled_dir.mkdir()
    titles = {}
    with open(titled_dir / "part-00000.jsonl", "w") as f:
        for k in KEYS[1::2]:
            text, title = topics[k].strip(), f"Notes on {k}"
            titles[content_id(text)] = title
            f.write(json.dumps({"text": text, "title": title}) + "\n")
    spec = {"_target_": "agents.embedder.OpenAIEmbedder", "model": "hash-embed", "base_url": embed_server.url,
            "name": "hash-embed", "query_prefix": "", "max_retries": 0, "tokenizer": minilm_tokenizer}
    embedder = OpenAIEmbedder(**{k: v for k, v in spec.items() if k != "_target_"})
    store = root / "chroma"
    for corpus in (FileCorpus(str(crawl.parent), name="crawl"), FileCorpus(str(titled_dir), name="titled")):
        index_corpus(corpus, TokenChunker(minilm_tokenizer), embedder, ChromaStore(str(store)), progress=False)
    return str(store), spec, parquet, titles


def _ctx(server, corpora, tiny_tokenizer, tmp_path, corpus) -> SynthContext:
    store, spec, _, _ = corpora
    return SynthContext(
        llm_base_url=server.url, llm_model="scripted", llm_timeout=5.0, llm_max_retries=2,
        cache_path=str(tmp_path / f"{corpus}.sqlite"), corpus=corpus,
        store=json.dumps({"_target_": "agents.store.ChromaStore", "path": store}),
        embedder=json.dumps(spec, sort_keys=True), tokenizer=tiny_tokenizer,
        qfs_chunk_tokens=1024, qfs_budget_tokens=2048, answer_max_tokens=256,
    )


def _run(ctx, jobs):
    async def go():
        try:
            return [await graph.ainvoke(job, config={"recursion_limit": 80, "max_concurrency": 8}, context=ctx)
                    for graph, job in jobs]
        finally:
            await resources(ctx).llm.aclose()

    outs = asyncio.run(go())
    for out in outs:
        assert out["rejection"] is None, out["rejection"]
    return [out["sample"] for out in outs]


def test_untitled_parquet_documents_leave_no_path_in_samples(server, corpora, tiny_tokenizer, tmp_path):
    _, _, parquet, _ = corpora
    ctx = _ctx(server, corpora, tiny_tokenizer, tmp_path, "crawl")
    jobs = [(synthesis.graph, {"index": i, "target_tokens": t}) for i, t in enumerate((2500, 3500, 5000))]
    jobs.append((acer.graph, {"index": 3, "question": "How does the assert statement work?", "context": "",
                              "target_tokens": 3000}))
    samples = _run(ctx, jobs)
    for sample in samples:
        user = sample["messages"][0]["content"]
        headers = HEADER.findall(user)
        assert [int(i) for i, _ in headers] == list(range(1, len(sample["doc_ids"]) + 1)), headers
        assert all(rest == "" for _, rest in headers), headers  # "Document 3", nothing after it
        dumped = json.dumps(sample)  # every message and every provenance string
        for where in (str(parquet), str(parquet.parent), parquet.parent.name, parquet.name, parquet.stem,
                      ".parquet", "docs.python.org"):
            assert where not in dumped, (where, sample["id"])
        assert not re.search(r"\S#\d+", dumped), re.search(r".{40}\S#\d+", dumped)  # a "<source>#<row>"
    assert sum(len(s["doc_ids"]) for s in samples) >= 8
    found = resources(ctx).retriever.search("the assert statement", k=3)  # the URL is kept, for provenance
    assert all(d.url.startswith("https://docs.python.org/") and d.title == "" for d in found)


def test_titled_jsonl_documents_are_headed_by_their_titles(server, corpora, tiny_tokenizer, tmp_path):
    _, _, _, titles = corpora
    ctx = _ctx(server, corpora, tiny_tokenizer, tmp_path, "titled")
    samples = _run(ctx, [(synthesis.graph, {"index": i, "target_tokens": t}) for i, t in enumerate((2500, 4000))])
    for sample in samples:
        user = sample["messages"][0]["content"]
        expected = [(str(i), f": {titles[d]}") for i, d in enumerate(sample["doc_ids"], start=1)]
        assert HEADER.findall(user) == expected
        assert "part-00000" not in json.dumps(sample) and ".jsonl" not in json.dumps(sample)
