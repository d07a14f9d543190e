"""Sample ids hash what decides a sample's content, not how the run reaches its services."""

import json
from dataclasses import replace

from graphs.context import SynthContext

OPENAI_EMBEDDER = {"_target_": "agents.embedder.OpenAIEmbedder", "model": "intfloat/e5-mistral-7b-instruct",
                   "base_url": "http://127.0.0.1:8000/v1", "timeout": 60.0, "batch_size": 32, "max_retries": 3,
                   "max_concurrency": 4, "api_key_env": "OPENAI_API_KEY", "query_prefix": "Query: "}

STORE = {"_target_": "agents.store.ChromaStore", "path": "data/chroma", "collection": None, "max_batch": None,
         "sidecar": None}
SERVER = {"_target_": "agents.store.ChromaStore", "host": "10.0.0.5", "port": 8001, "ssl": True,
          "headers": {"X-A": "b"}, "auth_token_env": "CHROMA_TOKEN", "sidecar": "/shared/sidecar", "collection": None,
          "max_batch": None}


def _id(ctx: SynthContext) -> str:
    return ctx.sample_id("long_input", 3, 131072)


def test_timeouts_urls_paths_and_concurrency_leave_sample_ids_alone():
    base = SynthContext(embedder=json.dumps(OPENAI_EMBEDDER, sort_keys=True))
    same = [
        replace(base, llm_timeout=61.0), replace(base, llm_base_url="http://10.0.0.7:8000/v1"),
        replace(base, llm_max_retries=9), replace(base, llm_max_in_flight=64),
        replace(base, store=json.dumps({**STORE, "path": "/fast/chroma", "max_batch": 100})),
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


def test_embedded_and_server_stores_give_the_same_sample_ids():
    base = SynthContext(embedder=json.dumps(OPENAI_EMBEDDER, sort_keys=True))
    stores = [STORE, SERVER, {**SERVER, "host": "127.0.0.1", "port": 8000, "sidecar": "/other"}]
    assert {_id(replace(base, store=json.dumps(s, sort_keys=True))) for s in stores} == {_id(base)}


def test_another_collection_changes_sample_ids():
    base = SynthContext(embedder=json.dumps(OPENAI_EMBEDDER, sort_keys=True))
    named = replace(base, store=json.dumps({**SERVER, "collection": "wiki-e5"}, sort_keys=True))
    assert _id(named) != _id(base)
