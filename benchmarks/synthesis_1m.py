"""One 1M-token SelfLong sample end to end, with the paper's QFS settings, against the loopback scripted server.

    python benchmarks/synthesis_1m.py [--target 1048576] [--samples 1] [--latency 0.05] [--copies 5]

The index: the built-in Python docs written `--copies` times (each copy under its own heading, so every document is
distinct), about 300k MiniLM tokens per copy, chunked and embedded through the scripted server's hashed embeddings.
The sample: pieces of at most 4096 tokens (`qfs_chunk_tokens`), summaries collapsed until they fit 16384
(`qfs_budget_tokens`), lengths in the bundled MiniLM tokenizer. Prints the LLM calls, wall time, client CPU and
tokens tokenized per sample token (the scripted server runs in its own process: its CPU is not counted).
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.chunker import TokenChunker
from agents.corpus import FileCorpus, PythonDocsCorpus
from agents.embedder import OpenAIEmbedder, minilm_path
from agents.indexer import index_corpus
from agents.store import ChromaStore
from graphs import synthesis
from graphs.context import SynthContext
from graphs.resources import resources
from graphs.run import make_jobs, output_paths, run_jobs
from tests.servers import serve_in_process


def write_corpus(path: Path, copies: int) -> int:
    """The Python docs `copies` times as one JSONL file; returns the number of documents."""
    docs = list(PythonDocsCorpus())
    with open(path, "w", encoding="utf-8") as f:
        for k in range(copies):
            for doc in docs:
                f.write(json.dumps({"text": f"Edition {k + 1} of the Python documentation.\n\n{doc.text}"}) + "\n")
    return copies * len(docs)


def main() -> None:
    """Index, synthesize, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, default=1_048_576)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per chat request at the server")
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--cap", type=int, default=64, help="LLM requests in flight")
    args = parser.parse_args()

    server, url = serve_in_process(args.latency)
    try:
        tmp = Path(tempfile.mkdtemp())
        n_docs = write_corpus(tmp / "corpus.jsonl", args.copies)
        spec = {"_target_": "agents.embedder.OpenAIEmbedder", "model": "hash-embed", "base_url": url,
                "name": "hash-embed", "query_prefix": "", "tokenizer": str(minilm_path())}
        embedder = OpenAIEmbedder(**{k: v for k, v in spec.items() if k != "_target_"})
        store = {"_target_": "agents.store.ChromaStore", "path": str(tmp / "chroma")}
        start = time.perf_counter()
        report = index_corpus(FileCorpus(str(tmp / "corpus.jsonl"), name="docs"), TokenChunker(str(minilm_path())),
                              embedder, ChromaStore(store["path"]), progress=False)
        index_s = time.perf_counter() - start
        ctx = SynthContext(
            llm_base_url=url, llm_model="scripted", llm_max_in_flight=args.cap, llm_timeout=60,
            cache_path=str(tmp / "cache.sqlite"), store=json.dumps(store), corpus="docs", embedder=json.dumps(spec),
            qfs_chunk_tokens=4096, qfs_budget_tokens=16384,
        )
        start = time.perf_counter()
        resources(ctx).warm()
        warm_s = time.perf_counter() - start
        jobs = make_jobs("selflong", args.samples, [args.target], 0, 1)
        samples_path, rejected_path = output_paths(tmp / "out", 0, 1)
        start, cpu = time.perf_counter(), time.process_time()
        summary = asyncio.run(run_jobs(synthesis.graph, ctx, "selflong", jobs, samples_path, rejected_path,
                                       samples_in_flight=args.samples, progress=False))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        encoded = resources(ctx).counter.tokens_encoded
    finally:
        server.terminate()
        server.wait()

    print(f"index: {n_docs} documents, {report.chunks} chunks in {index_s:.0f}s; start-up (tokenizer, embedder, "
          f"index) {warm_s:.1f}s")
    print(summary.line())
    for line in open(samples_path, encoding="utf-8"):
        sample = json.loads(line)
        prov = sample["provenance"]
        print(f"sample {sample['id']}: {sample['n_tokens']} tokens (target {sample['target_tokens']}), "
              f"{len(sample['doc_ids'])} documents ({len(set(sample['doc_ids']))} distinct), "
              f"{prov['calls']} LLM calls, "
              f"QFS pieces per level "
              f"{prov['qfs_pieces']}, dropped {prov['pieces_dropped']}")
    per = max(1, summary.samples)
    print(f"per sample: wall {wall / per:.1f}s, client CPU {cpu / per:.1f}s (all threads), LLM calls "
          f"{summary.calls / per:.0f}; tokens tokenized per sample token "
          f"{encoded / max(1, summary.sample_tokens):.2f}; "
          f"{args.latency * 1000:.0f} ms per chat request, {args.cap} in flight")


if __name__ == "__main__":
    main()
