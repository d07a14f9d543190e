"""Indexing throughput on the built-in corpus: is the embedder the only real cost?

    python benchmarks/index_throughput.py [--limit 40] [--chunk-tokens 200]

Prints chunks/s for raw embedding and for Chroma upserts, and the efficiency of the whole indexer:
the embedder's raw encode time on the same chunks divided by our end-to-end indexing time
(1.0 = the reader, chunker and store cost nothing; the goal is >= 0.9).
"""

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from agents.chunker import TokenChunker
from agents.corpus import PythonDocsCorpus
from agents.embedder import SentenceTransformerEmbedder
from agents.indexer import chunk_id, index_corpus
from agents.store import ChromaStore


def main() -> None:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="documents of python_docs (0 = all)")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--batch-chunks", type=int, default=256)
    args = parser.parse_args()

    embedder = SentenceTransformerEmbedder(name="all-MiniLM-L6-v2")
    chunker = TokenChunker(embedder.tokenizer_path, chunk_tokens=args.chunk_tokens,
                           overlap_tokens=args.chunk_tokens // 10)
    docs = list(PythonDocsCorpus(limit=args.limit or None))
    embedder.embed_documents(["warm-up"] * 8)

    t0 = time.perf_counter()
    chunks = [(d, c) for d in docs for c in chunker.chunks(d.blocks())]
    chunk_s = time.perf_counter() - t0
    texts = [c.text for _, c in chunks]

    t0 = time.perf_counter()
    step = args.batch_chunks
    vectors = [embedder.embed_documents(texts[i : i + step]) for i in range(0, len(texts), step)]
    encode_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        store = ChromaStore(os.path.join(tmp, "upsert"))
        store.open("bench", embedder.name, embedder.dimension, chunker.settings())
        import numpy as np

        all_vectors = np.concatenate(vectors)
        t0 = time.perf_counter()
        for i in range(0, len(chunks), args.batch_chunks):
            part = chunks[i : i + args.batch_chunks]
            store.upsert_chunks(
                [chunk_id(d.id, c) for d, c in part],
                all_vectors[i : i + args.batch_chunks],
                [c.text for _, c in part],
                [{"doc_id": d.id, "chunk_index": c.index} for d, c in part],
            )
        upsert_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = index_corpus(
            PythonDocsCorpus(limit=args.limit or None), chunker, embedder,
            ChromaStore(os.path.join(tmp, "e2e")), batch_chunks=args.batch_chunks, progress=False,
        )
        e2e_s = time.perf_counter() - t0
    assert report.chunks == len(chunks)

    n = len(chunks)
    print(f"device: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}")
    print(f"corpus: python_docs, {len(docs)} documents, {n} chunks of <= {args.chunk_tokens} tokens")
    print(f"{'step':<28}{'seconds':>10}{'chunks/s':>12}")
    for name, secs in [("chunk (tokenize)", chunk_s), ("embed (raw encode)", encode_s),
                       ("upsert (Chroma)", upsert_s), ("index_corpus end-to-end", e2e_s)]:
        print(f"{name:<28}{secs:>10.2f}{n / secs:>12.1f}")
    print(f"efficiency = raw encode / end-to-end = {encode_s / e2e_s:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
