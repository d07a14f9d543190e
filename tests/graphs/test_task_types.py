"""The instruction node: a task type per sample (drawn from the seed and index), and near-duplicates by meaning.

Node tests stand in for the LLM (`write_instruction`) and the index (a store of numbered chunks); the graph test
runs against the scripted server and the real index. New names are imported inside the tests that need them, so
the paraphrase test also runs on code from before task types.
"""

import asyncio
import contextvars
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
from langgraph.runtime import Runtime

from graphs import nodes, synthesis
from graphs.context import SynthContext
from graphs.resources import resources
from tests.servers import hashed_embedding

JSON_PICKLE = ("Compare how the json and pickle modules serialize Python objects, and explain when each one is the "
               "safer choice.")
# the same request in other words: few shared 3-grams, the same meaning
PARAPHRASE = ("Explain when each of the pickle and json modules is the safer choice, comparing how they serialize "
              "Python objects.")
UNRELATED = ("List every function in the library that accepts a timeout argument and describe what happens when it "
             "expires.")


def chi_square(counts: dict[str, int], weights: list[tuple[str, float]]) -> float:
    """Pearson's statistic of observed counts against the weights' proportions."""
    n, total = sum(counts.values()), sum(w for _, w in weights)
    return sum((counts.get(name, 0) - n * w / total) ** 2 / (n * w / total) for name, w in weights)


_INDEX = contextvars.ContextVar("index")  # the sample the fake writer answers for


class _Store:
    """What the instruction node reads of an index: a chunk count and numbered chunks."""

    def chunk_count(self) -> int:
        return 50

    def chunk_at(self, i: int) -> tuple[str, str]:
        return f"chunk-{i}", f"Passage number {i} of the library."


class _HashEmbedder:
    """The scripted server's hashed bag of words, in process."""

    name = "hash-embed"

    def embed_queries(self, texts):
        return np.asarray([hashed_embedding(t) for t in texts], dtype=np.float32)


def _ctx(tmp_path, embedder=None, **kw) -> SynthContext:
    """A context whose resources read `_Store` and `embedder` (never a real index)."""
    ctx = SynthContext(cache_path=str(tmp_path / "cache.sqlite"), llm_base_url="http://127.0.0.1:9/v1", **kw)
    resources(ctx)._retriever = SimpleNamespace(store=_Store(), embedder=embedder or _HashEmbedder())
    return ctx


def _fake_writer(monkeypatch, replies, sent=None, jitter=0.0, seed=0):
    """`write_instruction` answering `replies(index)` for the sample being run; the templates it got go to `sent`."""
    rng = random.Random(seed)

    async def write(llm, chunk, template=None):
        index = _INDEX.get()
        if sent is not None:
            sent.setdefault(index, set()).add(template)
        if jitter:
            await asyncio.sleep(rng.random() * jitter)
        return replies(index)

    monkeypatch.setattr(nodes, "write_instruction", write)


async def _node(ctx, index):
    _INDEX.set(index)
    return await nodes.instruction({"index": index, "target_tokens": 1000}, Runtime(context=ctx))


def _run_nodes(ctx, indices, in_flight):
    """The node over `indices` with at most `in_flight` at once, started in index order and decided lower indices
    first, as `run_jobs` does (started out of order, a full gate of higher indices would wait for ever)."""
    from agents.instructions import InOrder

    async def go():
        res = resources(ctx)
        res.order = InOrder(list(indices))
        gate = asyncio.Semaphore(in_flight)

        async def one(i):
            async with gate:
                return i, await _node(ctx, i)

        try:
            return dict(await asyncio.gather(*(one(i) for i in indices)))
        finally:
            res.order = None

    return asyncio.run(go())


def test_a_paraphrase_is_a_near_duplicate_by_meaning_and_an_unrelated_request_is_not(monkeypatch, tmp_path, minilm):
    """Default settings, MiniLM: the paraphrase shares almost no 3-gram with the earlier instruction."""
    replies = {0: JSON_PICKLE, 1: PARAPHRASE, 2: UNRELATED}
    _fake_writer(monkeypatch, replies.get)
    ctx = _ctx(tmp_path, embedder=minilm)
    out = {i: asyncio.run(_node(ctx, i)) for i in (0, 1, 2)}
    assert out[0].get("rejection") is None and out[0]["instruction"] == JSON_PICKLE
    rejection = out[1].get("rejection")
    assert rejection is not None, "the paraphrase was kept"
    assert rejection["step"] == "instruction" and rejection["cause"] == "content"
    assert rejection["reason"].startswith("near-duplicate instruction (cosine 0.9")
    assert out[1]["calls"] == ctx.instruction_attempts  # each attempt was judged and refused
    assert out[2].get("rejection") is None and out[2]["instruction"] == UNRELATED


def test_3_gram_near_duplicates_still_name_their_check_and_the_cosine_check_can_be_off(monkeypatch, tmp_path,
                                                                                      minilm):
    replies = {0: JSON_PICKLE, 1: JSON_PICKLE.replace("Compare", "Contrast"), 2: PARAPHRASE}
    _fake_writer(monkeypatch, replies.get)
    for cosine in (None, 1.0):
        ctx = _ctx(tmp_path / str(cosine), embedder=minilm, dedup_cosine=cosine)
        out = {i: asyncio.run(_node(ctx, i)) for i in (0, 1, 2)}
        assert out[1]["rejection"]["reason"].startswith("near-duplicate instruction (3-gram Jaccard 0.")
        assert out[2].get("rejection") is None  # by words alone, the paraphrase passes


def test_each_sample_records_its_task_type_drawn_in_the_configured_proportions(monkeypatch, tmp_path):
    from agents.instructions import task_weights
    from agents.prompts import INSTRUCTION_TEMPLATES

    sent: dict[int, set] = {}
    _fake_writer(monkeypatch, lambda i: f"Request number {i}: gather what the library says about subject {i}.", sent)
    ctx = _ctx(tmp_path, dedup_cosine=None, dedup_threshold=1.01)
    out = _run_nodes(ctx, range(200), in_flight=16)
    types = {i: o["task_type"] for i, o in out.items()}
    assert all(o.get("rejection") is None for o in out.values())
    assert all(sent[i] == {INSTRUCTION_TEMPLATES[t]} for i, t in types.items())  # asked with its type's template
    counts = {t: list(types.values()).count(t) for t in set(types.values())}
    assert chi_square(counts, task_weights(ctx.task_types)) < 18.47  # 4 degrees of freedom, p = 0.001
    assert "open" not in counts  # weight 0 by default


def test_the_same_seed_and_index_give_the_same_type_and_verdict_at_any_concurrency(monkeypatch, tmp_path):
    """Replies collide (5 distinct texts, two close by meaning) and finish in scrambled order; every run keeps
    and rejects the same samples, each with the same task type; another seed draws other types."""
    texts = ["Explain how sorting lists with key functions works across the library.",
             "Compare the threading and multiprocessing modules for parallel work.",
             "Describe network sockets, servers and clients and how they talk to each other.",
             "Summarize decimal rounding, precision and arithmetic contexts in detail.",
             "Summarize precision, rounding and contexts in decimal arithmetic."]
    _fake_writer(monkeypatch, lambda i: texts[(i * 7) % 5], jitter=0.01, seed=3)
    results = []
    for in_flight in (20, 4, 1):
        ctx = _ctx(tmp_path / str(in_flight), dedup_cosine=0.8)
        out = _run_nodes(ctx, range(20), in_flight)
        results.append({i: (o["task_type"], o.get("instruction"), (o.get("rejection") or {}).get("reason"))
                        for i, o in out.items()})
    assert results[0] == results[1] == results[2]
    reasons = [r for _, _, r in results[0].values() if r]
    assert any("3-gram Jaccard" in r for r in reasons) and any("cosine" in r for r in reasons)
    assert 2 <= sum(r is None for _, _, r in results[0].values()) < 20
    other = _run_nodes(_ctx(tmp_path / "seed1", dedup_cosine=0.8, seed=1), range(20), 4)
    assert [other[i]["task_type"] for i in range(20)] != [results[0][i][0] for i in range(20)]


def test_a_resumed_run_judges_against_earlier_instructions_by_meaning(monkeypatch, tmp_path):
    """`run_jobs` re-adds an earlier run's instructions without vectors: they are embedded when first needed."""
    _fake_writer(monkeypatch, lambda i: "Summarize precision, rounding and contexts in decimal arithmetic.")
    ctx = _ctx(tmp_path, dedup_cosine=0.8)
    finished = "Summarize decimal rounding, precision and arithmetic contexts in detail."  # sample 0, no vector
    resources(ctx).deduper.add(finished, 0)
    out = asyncio.run(_node(ctx, 1))
    assert out["rejection"]["reason"].startswith("near-duplicate instruction (cosine 0.")


def test_task_settings_shape_sample_ids_and_the_shipped_config_matches_the_context():
    from dataclasses import replace

    from omegaconf import OmegaConf

    from agents.errors import InputError
    from tests.conftest import compose

    base = SynthContext()
    changed = [replace(base, task_types=json.dumps({"qa": 1})), replace(base, dedup_cosine=0.8),
               replace(base, dedup_cosine=None)]
    ids = {c.sample_id("long_input", 3, 4096) for c in changed}
    assert len(ids) == 3 and base.sample_id("long_input", 3, 4096) not in ids

    cfg = compose("synthesize", [])
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("llm", "embedder", "store", "synth")}
    ctx = SynthContext.from_config(corpus="python_docs", **plain)
    assert ctx.task_types == base.task_types and ctx.dedup_cosine == base.dedup_cosine == 0.9
    plain["synth"]["task_types"] = {"timeline": 1, "qa": 1}  # any key order: the same setting
    assert json.loads(SynthContext.from_config(corpus="python_docs", **plain).task_types) == {"qa": 1, "timeline": 1}
    plain["synth"]["task_types"] = {"qa": 1, "haiku": 2}
    with pytest.raises(InputError, match="unknown task types"):
        SynthContext.from_config(corpus="python_docs", **plain)


def test_the_graphs_state_carries_the_task_type_and_the_server_got_its_template(server, topics_index, tiny_tokenizer,
                                                                               tmp_path):
    from agents.instructions import draw_task_type, task_weights
    from agents.prompts import INSTRUCTION_TEMPLATES

    server.control.record_bodies = True
    store, spec = topics_index
    ctx = SynthContext(llm_base_url=server.url, llm_model="scripted", llm_timeout=5.0,
                       cache_path=str(tmp_path / "c.db"),
                       store=json.dumps({"_target_": "agents.store.ChromaStore", "path": store}),
                       embedder=json.dumps(spec, sort_keys=True), tokenizer=tiny_tokenizer, qfs_chunk_tokens=1024,
                       qfs_budget_tokens=2048, task_types=json.dumps({"comparison": 1, "timeline": 1}))

    async def final_state(index):
        """What the nodes wrote into the graph's state (the output schema shows only sample and rejection)."""
        state = {}
        async for update in synthesis.graph.astream({"index": index, "target_tokens": 6000}, context=ctx,
                                                    stream_mode="updates", config={"recursion_limit": 80}):
            for written in update.values():
                state.update({k: v for k, v in (written or {}).items() if k != "summaries"})
        return state

    async def go():
        try:
            return [await final_state(i) for i in range(3)]
        finally:
            await resources(ctx).llm.aclose()

    states = asyncio.run(go())
    asked = [b["messages"][-1]["content"] for b in server.control.bodies
             if "Write one realistic request" in b["messages"][-1]["content"]]
    assert len(asked) == 3
    for i, (state, prompt) in enumerate(zip(states, asked)):
        assert state.get("rejection") is None and state.get("sample"), sorted(state)
        assert state["task_type"] == draw_task_type(task_weights(ctx.task_types), nodes._rng(ctx, i, "task"))
        tail = INSTRUCTION_TEMPLATES[state["task_type"]].format(random_chunk="").split("</passage>")[1]
        assert prompt.endswith(tail)  # asked with its type's template
    assert {s["task_type"] for s in states} <= {"comparison", "timeline"}
