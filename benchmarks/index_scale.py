"""Index access time against index size: does picking seeds and documents stay flat as the index grows?

    python benchmarks/index_scale.py [--sizes 10000 30000 100000 300000] [--dim 32]

One embedded Chroma index is grown to each size in turn (synthetic documents of 1–8 chunks of 40–60
words counted as 200 embedder tokens each, random unit embeddings of `--dim` dimensions, written
through `ChromaStore.upsert_chunks` and `register` as the indexer writes them, sidecar included).
Chroma's own writes run at ~1–2k chunks/s on 2 CPU cores, so 1M chunks (`--sizes … 1000000`) takes
15 minutes or more to build. At each size it times, per call:

- seed pick: the old `chunks.get(limit=1, offset=p)` (an SQL OFFSET scan) against `chunk_at(p)` (a
  sidecar lookup and a get by id), at uniformly random positions;
- back-translation candidates: the old registry scan of graphs/nodes.py (`docs.get(where=n_tokens >=
  lo // 4)`, sorted, then 20 sampled) against `pick_documents(lo // 4, None, rng, 20)`;
- gather: `Retriever.gather` of a random query up to a 16k budget counted with `len(text.split())`
  (HNSW search + registry lookups + document rebuild; no old/new, it should just stay flat).

Prints a table of milliseconds per call and old/new ratios. Goal: the new columns flat in index size
(apart from HNSW's own log factor in gather).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from agents.retriever import Retriever
from agents.store import ChromaStore

CORPUS, EMBEDDER = "synthetic", "random-unit"
WORDS = ("river mountain salmon volcano magma basalt bread flour yeast dough chess knight bishop board moon tide "
         "ocean honey bee flower nectar hive lava crust ash gas salt water sugar sea spawn upstream diagonal").split()


class RandomEmbedder:
    """Random unit query vectors (seeded by the query text): the benchmark times the store, not a model."""

    name = EMBEDDER

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """One random unit vector per text, the same for the same text."""
        return np.stack([_unit(np.random.default_rng(abs(hash(t)) % 2**32), 1, self.dimension)[0] for t in texts])


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def grow(store: ChromaStore, target_chunks: int, dim: int, rng: np.random.Generator, pool: list[str]) -> int:
    """Add synthetic documents until the index holds at least `target_chunks` chunks; returns documents added."""
    have = store.chunk_count(refresh=True)
    added = 0
    batch = store.max_batch
    while have < target_chunks:
        ids, texts, metas, doc_ids, doc_metas, doc_vecs = [], [], [], [], [], []
        while len(ids) < batch and have + len(ids) < target_chunks:
            doc_id = f"d{have + len(ids)}"
            n_chunks = int(rng.integers(1, 9))
            start = token = 0
            first = len(ids)
            for i in range(n_chunks):
                text = pool[int(rng.integers(len(pool)))]
                n_tok = 200  # embedder tokens of a full chunk at the default chunk_tokens
                ids.append(f"{doc_id}-{i}")
                texts.append(text)
                metas.append({"doc_id": doc_id, "chunk_index": i, "start": start, "end": start + len(text),
                              "token_start": token, "n_tokens": n_tok, "source": "synthetic"})
                start, token = start + len(text), token + n_tok
            doc_ids.append(doc_id)
            doc_metas.append({"source": "synthetic", "title": doc_id, "n_chunks": n_chunks, "n_tokens": token})
            doc_vecs.append((first, len(ids)))
        vectors = _unit(rng, len(ids), dim)
        store.upsert_chunks(ids, vectors, texts, metas)
        means = np.stack([vectors[a:b].mean(axis=0) for a, b in doc_vecs])
        store.register(doc_ids, (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32), doc_metas)
        have += len(ids)
        added += len(doc_ids)
    store.chunk_count(refresh=True)
    return added


def per_call_ms(fn, reps: int, warm: int = 3) -> float:
    """Median milliseconds of `fn(i)` over `reps` calls (after `warm` warm-up calls)."""
    for i in range(warm):
        fn(-1 - i)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(store: ChromaStore, retriever: Retriever, args: argparse.Namespace, size: int) -> dict[str, float]:
    """Old and new per-call times at the current size."""
    total = store.chunk_count()
    lo = 2048  # backtranslation_min_tokens; the registry filter is lo // 4 embedder tokens
    pos = random.Random(size)
    old_reps = args.old_reps if size < 500_000 else max(5, args.old_reps // 4)
    out = {
        "seed_old": per_call_ms(lambda i: store.chunks.get(limit=1, offset=pos.randrange(total), include=["documents"]),
                                old_reps),
        "seed_new": per_call_ms(lambda i: store.chunk_at(pos.randrange(total)), args.reps),
        "pick_old": per_call_ms(
            lambda i: random.Random(i).sample(
                ids := sorted(store.docs.get(where={"n_tokens": {"$gte": lo // 4}}, include=[])["ids"]),
                min(20, len(ids))),
            max(3, old_reps // 4)),
        "pick_new": per_call_ms(lambda i: store.pick_documents(lo // 4, None, random.Random(i), 20), args.reps),
        "gather": per_call_ms(
            lambda i: retriever.gather(f"query {size} {i}", args.budget, lambda t: len(t.split())), args.gather_reps),
    }
    return out


def main() -> None:
    """Grow the index, measure at each size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--reps", type=int, default=200, help="calls per new-way measurement")
    parser.add_argument("--old-reps", type=int, default=20, help="calls per old-way measurement")
    parser.add_argument("--gather-reps", type=int, default=10)
    parser.add_argument("--budget", type=int, default=16_384, help="gather budget (words)")
    parser.add_argument("--dir", default=None, help="keep the index here (default: a temporary folder)")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="index-scale-"))
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    pool = [" ".join(words[rng.integers(len(WORDS), size=int(rng.integers(40, 60)))]) for _ in range(4096)]
    store = ChromaStore(str(folder / "chroma"))
    store.open(CORPUS, EMBEDDER, args.dim, {})
    retriever = None
    rows = []
    docs = 0
    try:
        for size in sorted(args.sizes):
            t0 = time.perf_counter()
            docs += grow(store, size, args.dim, rng, pool)
            build = time.perf_counter() - t0
            os.sync()  # the writes' dirty pages flushed before timing reads
            time.sleep(2)
            if retriever is None:
                retriever = Retriever(RandomEmbedder(args.dim), store, CORPUS)
            got = measure(store, retriever, args, size)
            side = store.sidecar.path.stat().st_size
            rows.append((store.chunk_count(), docs, build, side, got))
            print(f"# {store.chunk_count()} chunks, {docs} documents: built in {build:.0f} s, sidecar "
                  f"{side / 2**20:.1f} MiB, {got}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{platform.machine()}, {os.cpu_count()} cores, dim {args.dim}, median ms per call "
          f"(old ways {args.old_reps} calls or fewer, new ways {args.reps}, gather {args.gather_reps})\n")
    print("| chunks | docs | seed get(offset) | seed chunk_at | ratio | registry scan | pick_documents | ratio "
          "| gather 16k | sidecar MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for chunks, n_docs, _, side, m in rows:
        print(f"| {chunks:,} | {n_docs:,} | {m['seed_old']:.2f} | {m['seed_new']:.2f} "
              f"| {m['seed_old'] / m['seed_new']:.0f}× "
              f"| {m['pick_old']:.1f} | {m['pick_new']:.2f} | {m['pick_old'] / m['pick_new']:.0f}× "
              f"| {m['gather']:.1f} | {side / 2**20:.1f} |")


if __name__ == "__main__":
    main()
