"""Build or query the retrieval index.

    python index.py corpus=files corpus.path=/data/docs store.path=/data/chroma
    python index.py query="How does the with statement work?"
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from agents.errors import InputError
from agents.indexer import index_corpus
from agents.retriever import Retriever, format_results


@hydra.main(version_base="1.3", config_path="conf", config_name="index")
def main(cfg: DictConfig) -> None:
    """Index `cfg.corpus` into `cfg.store`, or answer `cfg.query` from it."""
    try:
        embedder = instantiate(cfg.embedder)
        chunker = instantiate(cfg.chunker, tokenizer=cfg.chunker.tokenizer or embedder.tokenizer_path)
        store = instantiate(cfg.store)
        corpus = instantiate(cfg.corpus)
        if cfg.query:
            queries = list(cfg.query) if isinstance(cfg.query, ListConfig) else [str(cfg.query)]
            retriever = Retriever(embedder, store, corpus.name, chunker.settings())
            for query in queries:
                print(format_results(query, retriever.search(query, cfg.top_k)))
        else:
            report = index_corpus(corpus, chunker, embedder, store, cfg.batch_chunks, cfg.progress)
            print(report.summary())
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
