"""ACER samples (issue 15, finding 3): fitted to their target with the question and the reasoned answer in place,
the reader's passages labelled as the training input labels them, chunks the ranker reads whole, and BM25 over
words rather than whitespace-separated strings."""

from __future__ import annotations

import logging
import re
import types

import pytest

from agents.acer import rank_chunks
from agents.embedder import SentenceTransformerEmbedder
from agents.tokens import ChatTokenCounter
from graphs import acer
from graphs.context import SynthContext
from graphs.resources import Resources
from tests.graphs.scripted import invoke, synth_context

QUESTION = "How does the assert statement work?"
RAW_CONTEXT = " ".join(f"Filler sentence number {i} about nothing in particular." for i in range(150)) + (
    " The secret harbour of Valdoria opens at dawn for fishing boats. "
) + " ".join(f"More filler, line {i}, on other matters entirely." for i in range(150))


def _ctx(server, topics_index, tiny_tokenizer, tmp_path, **kw) -> SynthContext:
    return synth_context(server, topics_index, tiny_tokenizer, tmp_path, **{"answer_max_tokens": 2048, **kw})


def _invoke(ctx: SynthContext, job: dict) -> dict:
    return invoke(acer.graph, ctx, job)


def _reader_prompt(server) -> str:
    prompts = [m["content"] for b in server.control.bodies for m in b["messages"]
               if m["role"] == "user" and "Passages retrieved from a long context" in m["content"]]
    assert len(prompts) == 1, len(prompts)
    return prompts[0]


@pytest.mark.parametrize("reasoning_words", [0, 600], ids=["scripted", "long-reasoning"])
@pytest.mark.parametrize("target", [4000, 7000, 11000])
def test_retrieved_sample_is_within_one_percent_of_its_target_never_over(server, topics_index, tiny_tokenizer,
                                                                         tmp_path, target, reasoning_words):
    server.control.acer_reasoning_words = reasoning_words
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker="bm25", acer_chunk_tokens=128)
    out = _invoke(ctx, {"index": 0, "question": QUESTION, "context": "", "target_tokens": target})
    assert out["rejection"] is None, out["rejection"]
    sample = out["sample"]
    counter = ChatTokenCounter(tiny_tokenizer)
    n = counter.count_messages(sample["messages"])
    assert n == sample["n_tokens"] and sample["target_tokens"] == target
    assert n <= target, f"{n - target} tokens over the target of {target}"
    assert n >= 0.99 * target, f"{target - n} tokens under the target of {target}"
    user, assistant = (m["content"] for m in sample["messages"])
    assert user.startswith("Document 1: ") and user.endswith(f"\n\nQuestion: {QUESTION}")
    if reasoning_words:
        assert counter.count(assistant) > 1000  # the long answer is what the fit had to make room for


@pytest.mark.parametrize("given", [False, True], ids=["retrieved", "given-context"])
def test_every_passage_label_the_reader_saw_is_in_the_training_input(server, topics_index, tiny_tokenizer, tmp_path,
                                                                     given):
    server.control.record_bodies = True
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker="bm25", acer_chunk_tokens=96,
               acer_top_m=4)
    job = ({"index": 1, "question": "When does the harbour of Valdoria open?", "context": RAW_CONTEXT} if given
           else {"index": 1, "question": QUESTION, "context": "", "target_tokens": 5000})
    out = _invoke(ctx, job)
    assert out["rejection"] is None, out["rejection"]
    user, assistant = (m["content"] for m in out["sample"]["messages"])
    prompt = _reader_prompt(server)
    passages = re.findall(r"<passage>\n(.*?)\n(.*?)</passage>", prompt, re.S)
    assert len(passages) == 4, f"no passages labelled by their document in the reader's prompt:\n{prompt[:400]}"
    for label, text in passages:
        assert f"{label}\n" in user, f"the reader's label {label!r} is not in the training input"
        assert text.strip() in user, f"the passage under {label!r} is not in the training input"
    cited = re.findall(r"Document \d+(?:: [^\n]*?)? is the most relevant", assistant)
    assert cited and all(c.removesuffix(" is the most relevant") + "\n" in user for c in cited), assistant[:200]
    if given:
        assert "Valdoria" in assistant.split("Answer:")[0]  # the top passage held the fact
        body = re.sub(r"(?m)^Document \d+$", " ", user.removesuffix("\n\nQuestion: When does the harbour of "
                                                                       "Valdoria open?"))
        assert body.split() == RAW_CONTEXT.split()  # the given context whole, only labelled
        assert out["sample"]["doc_ids"] == []


def test_a_given_context_over_its_target_is_refused_not_cut(server, topics_index, tiny_tokenizer, tmp_path):
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker="bm25", acer_chunk_tokens=96)
    n = ChatTokenCounter(tiny_tokenizer).count(RAW_CONTEXT)
    out = _invoke(ctx, {"index": 2, "question": "When does the harbour of Valdoria open?", "context": RAW_CONTEXT,
                        "target_tokens": n // 2})
    assert out["sample"] is None, "a given context longer than its target must be refused, not used or cut"
    assert out["rejection"]["step"] == "acer_context" and "never cut" in out["rejection"]["reason"]


def test_an_answer_outgrowing_its_reserve_is_refused_rather_than_cutting_what_the_reader_saw(
        server, topics_index, tiny_tokenizer, tmp_path):
    server.control.acer_reasoning_words = 600  # ~1200 tokens, against a reserve of 50: the refit cuts read passages
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker="bm25", acer_chunk_tokens=128,
               acer_top_m=1000, answer_max_tokens=50)
    out = _invoke(ctx, {"index": 4, "question": QUESTION, "context": "", "target_tokens": 4000})
    assert out["sample"] is None
    assert out["rejection"]["step"] == "acer_assemble"
    assert "synth.answer_max_tokens=50" in out["rejection"]["reason"], out["rejection"]["reason"]
    out = _invoke(_ctx(server, topics_index, tiny_tokenizer, tmp_path, answer_max_tokens=4000),
                  {"index": 4, "question": QUESTION, "context": "", "target_tokens": 4000})
    assert out["rejection"]["step"] == "acer_context" and "leaves no room" in out["rejection"]["reason"]


class _Recording(SentenceTransformerEmbedder):
    """The bundled MiniLM (already loaded), recording every text it embeds as a document."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.__dict__.update(inner.__dict__)
        self.documents: list[str] = []

    def embed_documents(self, texts):
        self.documents.extend(texts)
        return super().embed_documents(texts)


def test_chunks_never_exceed_the_rankers_max_sequence_length(server, topics_index, tiny_tokenizer, tmp_path, minilm,
                                                             monkeypatch, caplog):
    recording = _Recording(minilm)
    monkeypatch.setattr(Resources, "retriever", property(lambda self: types.SimpleNamespace(embedder=recording)))
    ctx = _ctx(server, topics_index, tiny_tokenizer, tmp_path, acer_ranker="embedding", acer_chunk_tokens=512)
    with caplog.at_level(logging.WARNING):
        out = _invoke(ctx, {"index": 3, "question": "When does the harbour of Valdoria open?",
                            "context": RAW_CONTEXT})
    assert out["rejection"] is None, out["rejection"]
    limit = minilm.model.max_seq_length
    sizes = [len(minilm.model.tokenizer(t, verbose=False)["input_ids"]) for t in recording.documents]
    assert sizes and max(sizes) <= limit, f"chunks of up to {max(sizes)} word-pieces for a ranker reading {limit}"
    assert " ".join(recording.documents).split() == RAW_CONTEXT.split()  # the ranker read every word
    assert any("synth.acer_chunk_tokens" in r.message and str(limit) in r.message for r in caplog.records)


def test_bm25_matches_words_across_punctuation_and_case():
    chunks = [
        "The mill does grind grain for the town every week.",
        "HARBOUR, Valdoria: fishing boats may leave (at dawn).",
        "Bread is baked in the ovens near the market square.",
        "Rain falls often in the hills during the spring.",
    ]
    order = rank_chunks("When does the harbour of Valdoria open?", chunks, "bm25")
    assert order[0] == 1, [chunks[i] for i in order]
