"""The three graphs, run once per sample against the scripted server and a real Chroma index."""

import pytest

from agents.tokens import ChatTokenCounter
from graphs import acer, backtranslation, synthesis
from graphs.resources import resources
from tests.graphs.scripted import invoke, synth_context

_ctx = synth_context
_invoke = invoke


def test_long_input_sample_hits_its_target_length(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, answer_max_tokens=400)
    out = _invoke(synthesis.graph, ctx, {"index": 0, "target_tokens": 6000})
    assert out["rejection"] is None, out["rejection"]
    sample = out["sample"]
    counter = ChatTokenCounter(tiny_tokenizer)
    assert counter.count_messages(sample["messages"]) == sample["n_tokens"]
    # the target less what the answer left of its reserve
    answer_tokens = sample["provenance"]["answer_tokens"]
    assert 6000 - 400 + answer_tokens - 0.02 * 6000 <= sample["n_tokens"] <= 6000
    assert sample["kind"] == "long_input" and sample["id"] == ctx.sample_id("long_input", 0, 6000)
    user, assistant = (m["content"] for m in sample["messages"])
    assert user.startswith("Document 1: ") and user.endswith(sample["instruction"])
    assert "Relevant notes:" not in user  # raw documents, never the summaries
    assert assistant.startswith("Drawing on several documents")
    assert len(sample["doc_ids"]) >= 2 and sample["provenance"]["qfs_depth"] >= 1
    assert sample["provenance"]["calls"] >= 3 and sample["provenance"]["tokenizer"] == counter.name


def test_qfs_recurses_on_long_inputs_with_small_budgets(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, qfs_chunk_tokens=512, qfs_budget_tokens=200)
    out = _invoke(synthesis.graph, ctx, {"index": 1, "target_tokens": 8000})
    assert out["rejection"] is None, out["rejection"]
    assert out["sample"]["provenance"]["qfs_depth"] >= 2


def test_depth_cap_stops_the_recursion(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, qfs_chunk_tokens=512, qfs_budget_tokens=10, qfs_max_depth=2)
    out = _invoke(synthesis.graph, ctx, {"index": 2, "target_tokens": 4000})
    assert out["rejection"] is None, out["rejection"]
    assert out["sample"]["provenance"]["qfs_depth"] == 2


def test_a_refusing_endpoint_gives_a_rejection_with_step_and_reason(server, topics_index, tiny_tokenizer, tmp_path):
    server.control.fault_rate, server.control.fault_kinds = 1.0, ("refusal",)
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path)
    out = _invoke(synthesis.graph, ctx, {"index": 3, "target_tokens": 3000})
    assert out["sample"] is None
    assert out["rejection"]["step"] == "instruction" and "refusal" in out["rejection"]["reason"]


def test_target_larger_than_the_index_is_rejected(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path)
    out = _invoke(synthesis.graph, ctx, {"index": 4, "target_tokens": 10_000_000})
    assert out["rejection"]["step"] == "retrieve" and "for a target of 10000000" in out["rejection"]["reason"]


def test_backtranslation_makes_a_long_output_sample(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, backtranslation_min_tokens=1000,
               backtranslation_max_tokens=20000)
    out = _invoke(backtranslation.graph, ctx, {"index": 0})
    assert out["rejection"] is None, out["rejection"]
    sample = out["sample"]
    user, assistant = (m["content"] for m in sample["messages"])
    assert sample["kind"] == "long_output" and user.startswith("Write a long, detailed technical document")
    assert 1000 <= ChatTokenCounter(tiny_tokenizer).count(assistant) <= 20000


@pytest.mark.parametrize("ranker", ["embedding", "bm25"])
def test_acer_answers_from_top_chunks_and_trains_on_the_full_context(server, topics_index, tiny_tokenizer, tmp_path, ranker):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker=ranker, acer_chunk_tokens=64, acer_top_m=3)
    context = " ".join(f"Filler sentence number {i} about nothing in particular." for i in range(200))
    context += " The secret harbour of Valdoria opens at dawn for fishing boats."
    out = _invoke(acer.graph, ctx, {"index": 0, "question": "When does the harbour of Valdoria open?", "context": context})
    sample = out["sample"]
    user, assistant = (m["content"] for m in sample["messages"])
    # the whole given context, laid out as pieces under the labels the reader cites ("Document 1", ...)
    assert user.startswith("Document 1\nFiller")
    assert user.endswith("\n\nQuestion: When does the harbour of Valdoria open?")
    assert " ".join(ln for ln in user.splitlines()[:-1] if not ln.startswith("Document ")).split() == context.split()
    assert "Valdoria" in assistant.split("Answer:")[0]  # the top-ranked passage held the fact
    assert sample["kind"] == "acer" and "\n\nAnswer: " in assistant


def test_acer_retrieves_when_no_context_is_given(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker="bm25")
    out = _invoke(acer.graph, ctx, {"index": 1, "question": "How does the assert statement work?", "context": "",
                                     "target_tokens": 3000})
    sample = out["sample"]
    assert sample["doc_ids"] and sample["messages"][0]["content"].startswith("Document 1: ")
    assert sample["n_tokens"] <= 3000 + 200


def test_a_long_input_sample_tokenizes_its_documents_about_once(server, topics_index, tiny_tokenizer, tmp_path):
    """Each document is encoded once where it is retrieved (count, cut and QFS pieces from that one encode; only as
    much of a long one as its cut needs), the finished conversation once: what the tokenizer produced stays under 3x
    the sample's length (about 2.6x here, where the last document gathered is 10% of the sample; it was ~18x)."""
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, qfs_chunk_tokens=512, qfs_budget_tokens=1024,
               max_document_share=0.1)
    out = _invoke(synthesis.graph, ctx, {"index": 5, "target_tokens": 30000})
    assert out["rejection"] is None, out["rejection"]
    encoded = resources(ctx).counter.tokens_encoded
    assert encoded <= 3 * out["sample"]["n_tokens"], encoded / out["sample"]["n_tokens"]
    assert len(set(out["sample"]["doc_ids"])) == len(out["sample"]["doc_ids"])
