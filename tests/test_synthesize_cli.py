"""synthesize.py as a user runs it: real processes, SIGKILL at random moments, resume."""

import json
import os
import random
import signal
import subprocess
import sys
import time

from agents.llm_cache import LLMCache
from agents.samples import read_jsonl
from tests.conftest import ROOT
from tests.servers import free_port


def _args(server, topics_index, tiny_tokenizer, out, *extra):
    store, spec = topics_index
    return [
        sys.executable, "synthesize.py", f"llm.base_url={server.url}", "llm.model=scripted", "llm.timeout=10",
        "llm.max_in_flight=4", f"store.path={store}", "embedder=openai", f"embedder.base_url={spec['base_url']}",
        "embedder.model=hash-embed", "embedder.name=hash-embed", f"embedder.tokenizer={spec['tokenizer']}",
        f"synth.tokenizer={tiny_tokenizer}", f"synth.out_dir={out}", "synth.num_samples=6",
        "synth.target_lengths=[2500,3500]", "synth.qfs_chunk_tokens=512", "synth.qfs_budget_tokens=600",
        "synth.answer_max_tokens=256",
        "synth.progress=false", *extra,
    ]


def test_sigkill_at_random_moments_then_resume_gives_the_same_samples(server, topics_index, tiny_tokenizer, tmp_path):
    ref = subprocess.run(_args(server, topics_index, tiny_tokenizer, tmp_path / "ref"), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert "samples=6 rejected=0" in ref.stdout
    uninterrupted_calls = server.control.chat_requests
    server.control.reset()
    server.control.chat_latency = 0.03
    rng = random.Random(5)
    for _ in range(3):
        start = server.control.chat_requests
        proc = subprocess.Popen(_args(server, topics_index, tiny_tokenizer, tmp_path / "run"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_after = rng.randint(3, 25)
        deadline = time.time() + 120
        while server.control.chat_requests < start + kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    server.control.chat_latency = 0.0
    done = subprocess.run(_args(server, topics_index, tiny_tokenizer, tmp_path / "run"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cached_calls=0 " not in done.stdout  # calls finished before the last kill were replayed
    reference = read_jsonl(tmp_path / "ref" / "samples.jsonl")
    resumed = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert len(resumed) == len({s["id"] for s in resumed}) == 6  # no duplicate, none missing
    assert sorted(s["id"] for s in resumed) == sorted(s["id"] for s in reference)
    by_id = {s["id"]: s for s in reference}
    assert all(s["messages"] == by_id[s["id"]]["messages"] for s in resumed)
    # repeated at most: per kill, the requests in flight (cap 4) and replies not yet stored
    assert server.control.chat_requests <= uninterrupted_calls + 3 * 2 * 4
    assert len(LLMCache(tmp_path / "run" / "llm_cache.shard0.sqlite")) == uninterrupted_calls  # each once


def test_unreachable_endpoint_stops_before_writing(topics_index, tiny_tokenizer, tmp_path):
    class Down:
        url = f"http://127.0.0.1:{free_port()}/v1"

    result = subprocess.run(_args(Down, topics_index, tiny_tokenizer, tmp_path / "out"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"LLM endpoint {Down.url} is unreachable" in result.stderr
    assert not (tmp_path / "out").exists()


def test_sharded_runs_split_the_samples(server, topics_index, tiny_tokenizer, tmp_path):
    args = _args(server, topics_index, tiny_tokenizer, tmp_path / "out", "synth.shard=0,1", "synth.num_shards=2")
    args.insert(2, "--multirun")
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shards = [read_jsonl(tmp_path / "out" / f"samples.shard{i}-of-2.jsonl") for i in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    assert not {s["id"] for s in shards[0]} & {s["id"] for s in shards[1]}
    first = (tmp_path / "out" / "samples.shard0-of-2.jsonl").read_text().splitlines()[0]
    assert json.loads(first)["kind"] == "long_input"


def test_a_run_killed_20_times_stores_the_samples_of_an_uninterrupted_one(server, topics_index, tiny_tokenizer,
                                                                          tmp_path):
    """Instructions collide across seed chunks (4 distinct replies for 8 samples), so the near-duplicate filter
    decides which samples exist: two uninterrupted runs and one killed 20 times store byte-identical samples."""
    server.control.instruction_pool = 4
    extra = ("synth.num_samples=8", "synth.max_error_rate=1.0")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        done = subprocess.run(_args(server, topics_index, tiny_tokenizer, out, *extra), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    server.control.chat_latency = 0.02
    rng = random.Random(11)
    run = tmp_path / "killed"
    for _ in range(20):
        start = server.control.chat_requests
        proc = subprocess.Popen(_args(server, topics_index, tiny_tokenizer, run, *extra), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_after, deadline = rng.randint(1, 12), time.time() + 120
        while server.control.chat_requests < start + kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    server.control.chat_latency = 0.0
    done = subprocess.run(_args(server, topics_index, tiny_tokenizer, run, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    def stored(out):
        samples = sorted(json.dumps(s, sort_keys=True) for s in read_jsonl(out / "samples.jsonl"))
        rejected = sorted((r["index"], r["reason"]) for r in read_jsonl(out / "rejected.jsonl"))
        return samples, rejected

    first = stored(outs[0])
    assert any("near-duplicate" in reason for _, reason in first[1]) and first[0]  # the filter fired
    assert stored(outs[1]) == first
    assert stored(run) == first


def test_a_chroma_server_gives_the_samples_of_the_embedded_store(server, topics_index, tiny_tokenizer, tmp_path,
                                                                   chroma_server):
    """`store=chroma_server`: the same corpus indexed into a real `chroma run` on 127.0.0.1 and synthesized from
    there gives byte-identical samples (same ids, documents, instructions, answers) as the embedded store."""
    from agents.chunker import TokenChunker
    from agents.corpus import PythonDocsCorpus
    from agents.embedder import OpenAIEmbedder
    from agents.indexer import index_corpus
    from agents.store import ChromaStore

    _, spec = topics_index
    sidecar = tmp_path / "sidecar"
    embedder = OpenAIEmbedder(**{k: v for k, v in spec.items() if k != "_target_"})
    remote = ChromaStore(host=chroma_server.host, port=chroma_server.port, sidecar=str(sidecar))
    index_corpus(PythonDocsCorpus(docstrings=False), TokenChunker(spec["tokenizer"]), embedder, remote, progress=False)

    outs = {"embedded": tmp_path / "embedded", "server": tmp_path / "server"}
    for name, out in outs.items():
        args = _args(server, topics_index, tiny_tokenizer, out, "synth.num_samples=4")
        if name == "server":
            args = [a for a in args if not a.startswith("store.path=")] + chroma_server.overrides(sidecar)
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "samples=4 rejected=0" in done.stdout
    embedded, served = (sorted(json.dumps(s, sort_keys=True) for s in read_jsonl(out / "samples.jsonl"))
                        for out in outs.values())
    assert served == embedded
