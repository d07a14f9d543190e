"""Sample ids hash what decides a sample's content, not how the run reaches its services."""

import json
from dataclasses import replace

from graphs.context import SynthContext

OPENAI_EMBEDDER = {"_target_": "agents.embedder.OpenAIEmbedder", "model": "intfloat/e5-mistral-7b-instruct",
                   "base_url": "http://127.0.0.1:8000/v1", "timeout": 60.0, "batch_size": 32, "max_retries": 3,
                   "max_concurrency": 4, "api_key_env": "OPENAI_API_KEY", "query_prefix": "Query: "}


def _id(ctx: SynthContext) -> str:
    return ctx.sample_id("long_input", 3, 131072)


def test_timeouts_urls_paths_and_concurrency_leave_sample_ids_alone():
    base = SynthContext(embedder=json.dumps(OPENAI_EMBEDDER, sort_keys=True))
    same = [
        replace(base, llm_timeout=61.0), replace(base, llm_base_url="http://10.0.0.7:8000/v1"),
        replace(base, llm_max_retries=9), replace(base, llm_max_in_flight=64), replace(base, store_path="/fast/chroma"),
        replace(base, cache_path="/tmp/c.sqlite"),
        replace(base, embedder=json.dumps({**OPENAI_EMBEDDER, "timeout": 61.0, "base_url": "http://e:9/v1",
                                           "batch_size": 8}, sort_keys=True)),
    ]
    assert {_id(c) for c in same} == {_id(base)}


def test_what_shapes_content_changes_sample_ids():
    base = SynthContext(embedder=json.dumps(OPENAI_EMBEDDER, sort_keys=True))
    other = [
        replace(base, llm_model="other-model"), replace(base, llm_temperature=0.2),
        replace(base, qfs_chunk_tokens=2048),
        replace(base, corpus="wiki"), replace(base, seed=1), replace(base, doc_header="## {title}"),
        replace(base, embedder=json.dumps({**OPENAI_EMBEDDER, "model": "BAAI/bge-m3"}, sort_keys=True)),
    ]
    ids = [_id(c) for c in other]
    assert _id(base) not in ids and len(set(ids)) == len(ids)
