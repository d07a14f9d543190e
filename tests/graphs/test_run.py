"""The runner: many samples at once, faults, the request cap, shards, early stop."""

import asyncio
import json

import pytest

from agents.samples import read_jsonl
from graphs import synthesis
from graphs.context import SynthContext
from graphs.run import RunStopped, make_jobs, output_paths, run_jobs


def _ctx(server, topics_index, tiny_tokenizer, tmp_path, **kw):
    store, spec = topics_index
    settings = dict(
        llm_base_url=server.url, llm_model="scripted", llm_timeout=0.5, llm_max_retries=3, llm_max_in_flight=4,
        cache_path=str(tmp_path / "cache.sqlite"), corpus="python_docs",
        store=json.dumps({"_target_": "agents.store.ChromaStore", "path": store}),
        embedder=json.dumps(spec, sort_keys=True), tokenizer=tiny_tokenizer, qfs_chunk_tokens=1024,
        qfs_budget_tokens=2048, answer_max_tokens=256,
    )
    settings.update(kw)
    return SynthContext(**settings)


def _run(ctx, jobs, tmp_path, **kw):
    samples, rejected = output_paths(tmp_path / "out", 0, 1)
    summary = asyncio.run(run_jobs(synthesis.graph, ctx, "selflong", jobs, samples, rejected, progress=False, **kw))
    return summary, read_jsonl(samples), read_jsonl(rejected)


def test_an_answer_reserve_over_half_a_target_is_refused_before_any_work(server, topics_index, tiny_tokenizer,
                                                                        tmp_path):
    from agents.errors import InputError

    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, answer_max_tokens=2048)
    with pytest.raises(InputError, match=r"synth.answer_max_tokens=2048 leaves less than half of sample 1's "
                                         r"3000-token target"):
        _run(ctx, make_jobs("selflong", 4, [5000, 3000], 0, 1), tmp_path)
    assert server.control.chat_requests == 0 and not (tmp_path / "out").exists()


def test_30_percent_faults_every_seed_is_a_sample_or_a_reasoned_rejection(server, topics_index, tiny_tokenizer, tmp_path):
    server.control.fault_rate, server.control.fault_seed, server.control.timeout_sleep = 0.3, 7, 1.0
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path)
    jobs = make_jobs("selflong", 12, [2000, 3000], 0, 1)
    summary, samples, rejected = _run(ctx, jobs, tmp_path, max_error_rate=1.0)
    assert set(server.control.faults) == set(server.control.fault_kinds)  # every kind was injected
    ids = {ctx.sample_id("long_input", j["index"], j["target_tokens"]) for j in jobs}
    assert {s["id"] for s in samples} | {r["id"] for r in rejected} == ids
    assert len(samples) + len(rejected) == 12 and summary.samples == len(samples) > 0
    for r in rejected:
        assert r["step"] in {"instruction", "retrieve", "qfs", "answer"} and r["reason"]
    assert server.control.peak_in_flight <= 4


def test_request_cap_holds_under_load(server, topics_index, tiny_tokenizer, tmp_path):
    server.control.chat_latency = 0.02
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, llm_max_in_flight=3, llm_timeout=5.0)
    summary, samples, _ = _run(ctx, make_jobs("selflong", 6, [3000], 0, 1), tmp_path)
    assert len(samples) == 6 and server.control.peak_in_flight == 3 and summary.peak_in_flight == 3


def test_shards_are_disjoint_and_cover_the_run():
    all_jobs = make_jobs("selflong", 10, [100, 200], 0, 1)
    shards = [make_jobs("selflong", 10, [100, 200], s, 3) for s in range(3)]
    indices = [j["index"] for shard in shards for j in shard]
    assert sorted(indices) == list(range(10)) and len(set(indices)) == 10
    assert all(j["target_tokens"] == (100 if j["index"] % 2 == 0 else 200) for j in all_jobs)
    with pytest.raises(ValueError, match=r"synth.shard=3 must be in \[0, synth.num_shards=3\)"):
        make_jobs("selflong", 10, [100], 3, 3)


def test_run_stops_when_too_many_samples_fail(server, topics_index, tiny_tokenizer, tmp_path):
    server.control.fault_rate, server.control.fault_kinds = 1.0, ("empty",)
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, llm_timeout=5.0)
    with pytest.raises(RunStopped, match=r"samples rejected \(> synth.max_error_rate=0.5\)"):
        _run(ctx, make_jobs("selflong", 40, [2000], 0, 1), tmp_path, min_finished_for_stop=5)
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert 5 <= len(rejected) < 40


def test_a_samples_content_never_depends_on_completion_order(server, topics_index, tiny_tokenizer, tmp_path):
    """Instructions collide across seed chunks (3 distinct replies for 10 samples), so the near-duplicate
    filter fires; runs with different concurrency finish in different orders yet store the same samples."""
    server.control.instruction_pool = 3
    jobs = make_jobs("selflong", 10, [2000], 0, 1)
    results = []
    for run, in_flight in enumerate((10, 3, 1)):
        ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path / f"r{run}", cache_path=str(tmp_path / f"c{run}.db"),
                   llm_max_in_flight=4 if in_flight > 1 else 1)
        summary, samples, rejected = _run(ctx, jobs, tmp_path / f"r{run}", samples_in_flight=in_flight,
                                          max_error_rate=1.0)
        results.append(({json.dumps(s, sort_keys=True) for s in samples},
                        {(r["index"], r["reason"]) for r in rejected}))
    assert any("near-duplicate" in reason for _, reason in results[0][1])  # the filter fired
    assert len(results[0][0]) >= 2
    assert results[0] == results[1] == results[2]


def test_2_percent_failed_calls_drop_pieces_not_samples_and_are_never_replayed(server, topics_index, tiny_tokenizer,
                                                                               tmp_path):
    """Samples of >= 100 calls against an endpoint whose every 50th distinct request fails for good (refusal, cut,
    invalid JSON, HTTP 500 through the client's retries): >= 95% of samples are made, each counting what it dropped;
    once the endpoint is healthy, a rerun on the same cache asks every failed request again."""
    control = server.control
    control.sticky_faults, control.fault_rate = True, 0.02
    control.fault_kinds = ("refusal", "malformed", "truncate", "500")
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, llm_max_retries=1, llm_timeout=5.0, llm_max_in_flight=8,
               qfs_chunk_tokens=128, qfs_budget_tokens=2048)
    jobs = make_jobs("selflong", 30, [4500], 0, 1)
    summary, samples, rejected = _run(ctx, jobs, tmp_path, max_error_rate=1.0, samples_in_flight=30)
    assert set(control.faults) == set(control.fault_kinds)
    assert summary.failed_calls >= 0.01 * summary.calls  # the faults reached the graph
    assert len(samples) >= 0.95 * len(jobs), rejected
    assert min(s["provenance"]["calls"] for s in samples) >= 100
    for s in samples:
        prov = s["provenance"]
        assert prov["pieces_dropped"] == len(prov["dropped"])
        for level, pieces in enumerate(prov["qfs_pieces"]):  # each level kept at least 90% of its pieces
            assert sum(d["level"] == level for d in prov["dropped"]) <= 0.1 * pieces
        assert all(d["reason"] for d in prov["dropped"])
    dropped = sum(s["provenance"]["pieces_dropped"] for s in samples)
    assert dropped > 0
    for r in rejected:
        assert r["cause"] in {"endpoint", "content"}

    control.reset()  # healthy: a failure kept in the cache would come back as the same dropped piece
    again, samples2, _ = _run(ctx, jobs, tmp_path / "again", max_error_rate=1.0, samples_in_flight=30)
    assert control.chat_requests >= dropped and again.cached_calls > 0
    assert len(samples2) >= len(samples)
    assert all(s["provenance"]["pieces_dropped"] == 0 for s in samples2)


def test_retry_rejected_turns_endpoint_failures_into_samples_once_the_endpoint_is_healthy(server, topics_index,
                                                                                         tiny_tokenizer, tmp_path):
    control = server.control
    control.sticky_faults, control.fault_rate, control.fault_kinds = True, 1.0, ("500",)
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, llm_max_retries=1, llm_timeout=5.0)
    jobs = make_jobs("selflong", 6, [2000, 2000, 10_000_000], 0, 1)  # every third one larger than the index
    first, samples, rejected = _run(ctx, jobs, tmp_path, max_error_rate=1.0)
    assert first.rejected == 6 and not samples
    assert {r["cause"] for r in rejected} == {"endpoint"} and all("HTTP 500" in r["reason"] for r in rejected)

    control.reset()
    skipped, samples, _ = _run(ctx, jobs, tmp_path, max_error_rate=1.0)  # the default: rejections are final
    assert skipped.already_done == 6 and not samples and control.chat_requests == 0
    retried, samples, rejected = _run(ctx, jobs, tmp_path, max_error_rate=1.0, retry_rejected=True)
    assert retried.samples == 4 and len(samples) == 4 and retried.rejected == 2
    assert control.chat_requests > 0
    requests = control.chat_requests
    # the two too-long ones now failed a content check: never retried
    last, _, _ = _run(ctx, jobs, tmp_path, max_error_rate=1.0, retry_rejected=True)
    assert last.already_done == 6 and control.chat_requests == requests
