"""What the graph tests share: a context on the scripted server and the session's real Chroma index, and one run
of a graph."""

import asyncio
import json

from graphs.context import SynthContext
from graphs.resources import resources


def synth_context(server, topics_index, tiny_tokenizer, tmp_path, **kw) -> SynthContext:
    """Settings for the scripted server (`tests/servers.py`) and the `topics_index` fixture; `kw` overrides."""
    store, spec = topics_index
    settings = dict(
        llm_base_url=server.url, llm_model="scripted", llm_timeout=5.0, llm_max_retries=2,
        cache_path=str(tmp_path / "cache.sqlite"), corpus="python_docs",
        store=json.dumps({"_target_": "agents.store.ChromaStore", "path": store}),
        embedder=json.dumps(spec, sort_keys=True), tokenizer=tiny_tokenizer,
        qfs_chunk_tokens=1024, qfs_budget_tokens=2048, answer_max_tokens=256,  # the tests' targets are small
    )
    settings.update(kw)
    return SynthContext(**settings)


def invoke(graph, ctx: SynthContext, job: dict) -> dict:
    """One run of `graph` on `job`; the client is closed after."""
    async def go():
        try:
            return await graph.ainvoke(job, config={"recursion_limit": 80, "max_concurrency": 8}, context=ctx)
        finally:
            await resources(ctx).llm.aclose()

    return asyncio.run(go())
