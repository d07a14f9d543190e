"""Samples a careful researcher would train on (issue 15): the answer's budget is reserved so that the documents QFS
read are the sample's documents, the answer is confined to the notes and cites the sample's own labels, a judge
can reject it as ungrounded, provenance says where each document came from and sits, lengths follow a
distribution, and a back-translated instruction must fit its document."""

import asyncio
import json
import re
from collections import Counter

import pytest

from agents.backtranslation import instruction_fits
from agents.errors import InputError
from graphs import backtranslation, synthesis
from graphs.context import SynthContext
from graphs.resources import resources
from graphs.run import make_jobs, target_length
from tests.graphs.scripted import invoke, synth_context


def _ctx(server, topics_index, tiny_tokenizer, tmp_path, **kw) -> SynthContext:
    return synth_context(server, topics_index, tiny_tokenizer, tmp_path, **{"answer_max_tokens": 400, **kw})
_invoke = invoke


def _user_prompts(server) -> list[str]:
    return [b["messages"][-1]["content"] for b in server.control.bodies]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_document_qfs_read_is_in_the_sample_whole(server, topics_index, tiny_tokenizer, tmp_path, index):
    """The answer's tokens are reserved when documents are first fitted, so `assemble` never cuts or drops what
    QFS read: every line of every first-level QFS piece is in the sample's user turn."""
    server.control.record_bodies = True
    out = _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path),
                  {"index": index, "target_tokens": 5000})
    assert out["rejection"] is None, out["rejection"]
    user = out["sample"]["messages"][0]["content"]
    pieces = [p.split("<text>\n", 1)[1].rsplit("\n</text>", 1)[0] for p in _user_prompts(server)
              if p.startswith("You are gathering material") and "Relevant notes:" not in p]
    assert pieces
    missing = [line for piece in pieces for line in piece.splitlines() if line.strip() and line not in user]
    assert not missing, f"{len(missing)} lines QFS read are not in the sample, e.g. {missing[-1][-80:]!r}"
    assert out["sample"]["n_tokens"] <= 5000


def test_the_answer_is_confined_to_the_notes_and_cites_the_samples_own_labels(server, topics_index, tiny_tokenizer,
                                                                              tmp_path):
    server.control.record_bodies = True
    out = _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path), {"index": 3,
                                                                                          "target_tokens": 5000})
    assert out["rejection"] is None, out["rejection"]
    answer_prompt = next(p for p in _user_prompts(server) if p.startswith("Notes gathered"))
    assert "Use only what the notes say" in answer_prompt and "for example (Document 3)" in answer_prompt
    assert max(b.get("max_tokens") or 0 for b in server.control.bodies if "Notes gathered" in str(b)) == 400
    sample = out["sample"]
    labels = set(re.findall(r"^Document (\d+)", sample["messages"][0]["content"], re.M))
    cited = set(re.findall(r"Document (\d+)", sample["messages"][1]["content"]))
    assert cited and cited <= labels, (cited, labels)  # every label the answer names is one the sample shows
    server.control.bodies.clear()
    _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path / "nocite", cite=False),
            {"index": 3, "target_tokens": 5000})
    answer_prompt = next(p for p in _user_prompts(server) if p.startswith("Notes gathered"))
    assert "Use only what the notes say" in answer_prompt and "Point to the documents" not in answer_prompt


def test_a_judge_rejects_an_ungrounded_answer_and_is_counted(server, topics_index, tiny_tokenizer, tmp_path):
    job = {"index": 4, "target_tokens": 5000}
    plain = _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path / "a"), job)["sample"]
    assert plain["provenance"]["verified"] is None
    checked = _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path / "b", verify=True),
                      job)["sample"]
    assert checked["provenance"]["verified"] is True
    assert checked["provenance"]["calls"] == plain["provenance"]["calls"] + 1
    server.control.verdict = "no"
    out = _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path / "c", verify=True), job)
    assert out["sample"] is None
    assert out["rejection"]["step"] == "verify" and out["rejection"]["cause"] == "content"
    assert out["rejection"]["reason"].startswith("ungrounded")


def test_provenance_records_each_documents_rank_position_tokens_and_cut(server, topics_index, tiny_tokenizer,
                                                                        tmp_path):
    out = _invoke(synthesis.graph, _ctx(server, topics_index, tiny_tokenizer, tmp_path),
                  {"index": 5, "target_tokens": 6000})
    prov = out["sample"]["provenance"]
    docs = prov["documents"]
    assert [d["id"] for d in docs] == out["sample"]["doc_ids"]
    assert [d["position"] for d in docs] == list(range(1, len(docs) + 1))
    ranks = [d["rank"] for d in docs]
    assert len(set(ranks)) == len(ranks) and min(ranks) >= 1
    assert sorted(ranks) != ranks or len(ranks) < 3  # shuffled: positions are not ranks
    assert sum(d["tokens"] for d in docs) < out["sample"]["n_tokens"]
    user = out["sample"]["messages"][0]["content"]
    stored = resources(_ctx(server, topics_index, tiny_tokenizer, tmp_path)).retriever.store.documents(
        [d["id"] for d in docs])
    assert [d["cut"] for d in docs] == [stored[d["id"]] not in user for d in docs]
    assert prov["task_type"] and prov["answer_tokens"] > 0 and prov["qfs_pieces"] and "pieces_dropped" in prov


def test_target_lengths_may_be_a_distribution_drawn_per_sample_by_seed():
    spec = [{"min": 1000, "max": 2000, "weight": 3}, [8000, 9000]]
    lengths = [target_length(spec, i, seed=7) for i in range(400)]
    low = sum(1000 <= n <= 2000 for n in lengths)
    assert low + sum(8000 <= n <= 9000 for n in lengths) == 400 and 260 <= low <= 340  # weights 3 : 1
    assert len(set(lengths)) > 300  # spread within the ranges, not one length
    assert lengths == [target_length(spec, i, seed=7) for i in range(400)]
    assert lengths != [target_length(spec, i, seed=8) for i in range(400)]
    shards = [make_jobs("selflong", 30, spec, s, 3, seed=7) for s in range(3)]  # a sample's length is its own
    assert sorted((j["index"], j["target_tokens"]) for shard in shards for j in shard) == [
        (i, lengths[i]) for i in range(30)]
    assert [j["target_tokens"] for j in make_jobs("selflong", 4, [100, 200], 0, 1)] == [100, 200, 100, 200]
    for bad in ([], [{"min": 5, "max": 2}], [[1, 2, 3]], [{"min": 1, "max": 2, "weight": 0}], ["long"]):
        with pytest.raises(InputError, match="synth.target_lengths"):
            target_length(bad, 0, 0)


def test_a_run_with_a_length_distribution_spreads_its_samples(server, topics_index, tiny_tokenizer, tmp_path):
    from graphs.run import output_paths, run_jobs

    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path)
    jobs = make_jobs("selflong", 6, [[2500, 4000], [5000, 7000]], 0, 1, seed=0)
    samples_path, rejected_path = output_paths(tmp_path / "out", 0, 1)
    asyncio.run(run_jobs(synthesis.graph, ctx, "selflong", jobs, samples_path, rejected_path, 4, 1.0, 100, False))
    samples = [json.loads(line) for line in open(samples_path)]
    assert len(samples) >= 5
    targets = Counter(s["target_tokens"] for s in samples)
    assert len(targets) == len(samples)  # every sample its own length
    assert all(s["target_tokens"] - 400 - 100 <= s["n_tokens"] <= s["target_tokens"] for s in samples)


def test_a_back_translated_instruction_must_ask_for_its_documents_content(server, topics_index, tiny_tokenizer,
                                                                         tmp_path):
    doc = ("The garbage collector frees reference cycles. Each generation of the collector is examined when its "
           "threshold is exceeded; objects that survive a collection move to the next generation.")
    assert instruction_fits("Write a long explanation of how the garbage collector handles generations.", doc) is None
    assert instruction_fits("Write a recipe for a lemon cake with a crunchy topping.", doc).startswith(
        "the instruction shares no topic word")
    assert instruction_fits("Write an essay on Mortimer's lighthouse.", doc, title="Mortimer's lighthouse") is None
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, backtranslation_min_tokens=200,
               backtranslation_max_tokens=4000, verify=True)
    out = _invoke(backtranslation.graph, ctx, {"index": 0})
    assert out["rejection"] is None and out["sample"]["provenance"]["verified"] is True
    server.control.verdict = "no"
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path / "no", backtranslation_min_tokens=200,
               backtranslation_max_tokens=4000, verify=True)
    out = _invoke(backtranslation.graph, ctx, {"index": 0})
    assert out["rejection"]["step"] == "verify" and "does not fit the document" in out["rejection"]["reason"]
