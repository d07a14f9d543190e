"""Graph nodes: thin adapters between graph state and the building blocks in `agents/`.

A node never raises for a bad sample: it returns `{"rejection": {"step", "reason"}}` and the graph
ends. Blocking work (retrieval, tokenization) runs in a worker thread so the event loop keeps
other samples' requests flowing.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Send

from agents.acer import (Passage, acer_answer, acer_messages, cap_passages, document_chunks, fit_acer,
                         passages_left_out, rank_chunks, reasoned_target, text_pieces)
from agents.assembly import SourceDocument, document_header, fit_documents, messages_for, user_turn
from agents.backtranslation import back_translate, instruction_fits
from agents.instructions import draw_task_type, instruction_problem, task_weights, write_instruction
from agents.llm import LLMFailure
from agents.prompts import (ANSWER_PROMPT, CITE_RULE, INSTRUCTION_FIT_PROMPT, INSTRUCTION_TEMPLATES, SYSTEM_PROMPT,
                            VERIFY_PROMPT)
from agents.schemas import Verdict
from agents.qfs import pack, pack_parts, split_counted, summarize
from graphs.context import SynthContext
from graphs.resources import resources
from graphs.state import SummarizeTask, SynthState


def _reject(step: str, reason: str, cause: str = "content") -> dict[str, Any]:
    """A rejection: `cause` is "endpoint" when the endpoint gave no usable reply (worth retrying once it is
    healthy, `synth.retry_rejected`), "content" when a check on what came back failed."""
    return {"rejection": {"step": step, "reason": reason, "cause": cause}, "sample": None}


def _rng(ctx: SynthContext, *parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in (ctx.seed, *parts)))


async def _judge(res: Any, prompt: str) -> Verdict:
    """A judge call (`synth.verify`): whether what `prompt` shows is supported (LLMFailure when no usable reply)."""
    return await res.llm.json([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                              Verdict)


def _record(ctx: SynthContext, state: dict[str, Any], kind: str, messages: list[dict[str, str]], n_tokens: int,
            doc_ids: list[str], instruction: str, **provenance: Any) -> dict[str, Any]:
    """A line of the sample JSONL (DESIGN.md's contract)."""
    embedder = resources(ctx).retriever.embedder.name if doc_ids else None
    return {
        "id": state["sample_id"],
        "kind": kind,
        "messages": messages,
        "target_tokens": state.get("target_tokens") or n_tokens,
        "n_tokens": n_tokens,
        "doc_ids": doc_ids,
        "instruction": instruction,
        "provenance": {"llm": ctx.llm_model, "embedder": embedder, "tokenizer": resources(ctx).counter.name,
                       **provenance},
    }


# --- long-input (SelfLong) ------------------------------------------------------------------------


async def instruction(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Task type (drawn from the seed and index, `synth.task_types`) and seed chunk → instruction written with
    that type's template; a failed, refused, bad or near-duplicate one (3-gram Jaccard, or cosine of embeddings
    when `dedup_cosine` is on) is retried with the next seed chunk, up to `instruction_attempts` times."""
    ctx = runtime.context
    res = resources(ctx)
    index = state["index"]
    sid = ctx.sample_id("long_input", index, state["target_tokens"])
    task_type = draw_task_type(task_weights(ctx.task_types), _rng(ctx, index, "task"))
    by_meaning = ctx.dedup_cosine is not None and ctx.dedup_cosine < 1.0
    store, embedder = await asyncio.to_thread(lambda: (res.retriever.store, res.retriever.embedder))
    total = await asyncio.to_thread(store.chunk_count)  # the index sidecar's count, read once per process
    reason, cause = "no attempt", "content"
    try:
        for attempt in range(ctx.instruction_attempts):
            chunk_id, chunk = await asyncio.to_thread(store.chunk_at, _rng(ctx, index, attempt).randrange(total))
            try:
                text = await write_instruction(res.llm, chunk, INSTRUCTION_TEMPLATES[task_type])
            except LLMFailure as err:
                reason, cause = str(err), "endpoint"  # another attempt may succeed once the endpoint recovers
                continue
            reason = instruction_problem(text, ctx.instruction_min_words, ctx.instruction_max_words)
            if reason is None:
                # embedded before waiting for the turn: samples embed in parallel, only the verdicts go in order
                vector = (await asyncio.to_thread(embedder.embed_queries, [text]))[0] if by_meaning else None

                def duplicate() -> str | None:
                    jaccard = res.deduper.similar(text, index)
                    if jaccard >= ctx.dedup_threshold:
                        return f"near-duplicate instruction (3-gram Jaccard {jaccard:.2f})"
                    if vector is not None:
                        cosine = res.deduper.closest_meaning(vector, index, embedder.embed_queries)
                        if cosine >= ctx.dedup_cosine:
                            return f"near-duplicate instruction (cosine {cosine:.2f})"
                    return None

                # near-duplicates of lower indices only, decided once all of them are final: a sample's
                # instruction never depends on which samples finished first
                if res.order is not None:
                    await res.order.turn(index)
                reason = await asyncio.to_thread(duplicate)
                if reason is None:
                    res.deduper.add(text, index, vector)
                    return {"sample_id": sid, "seed_chunk_id": chunk_id, "task_type": task_type, "instruction": text,
                            "calls": attempt + 1}
        return {"sample_id": sid, "task_type": task_type, "calls": ctx.instruction_attempts,
                **_reject("instruction", reason, cause)}
    finally:
        if res.order is not None:
            res.order.settle(index)


async def retrieve(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Documents for the instruction until the assembled sample reaches its target length less the answer's
    reserve (`answer_max_tokens`): the documents QFS reads are exactly those of the finished sample.

    Each document is encoded once here: that one encode gives its token count, its cut at
    `max_document_share` and where its QFS pieces begin; the counts travel on in the state, with each
    document's retrieval rank and whether it was cut.
    """
    ctx = runtime.context
    res = resources(ctx)

    def work() -> dict[str, Any]:
        counter = res.counter
        cap = max(1, int(ctx.max_document_share * state["target_tokens"]))
        encodings: dict[str, Any] = {}  # text -> its encoding (of a prefix past `cap` when longer)

        def count(text: str) -> int:
            encodings[text] = counter.encode(text, cap)
            return len(encodings[text])

        found = res.retriever.gather(state["instruction"], state["target_tokens"], count, cap)
        docs, splits, by_id, rank, full = [], {}, {}, {}, {}
        for r, (d, _) in enumerate(found, 1):
            by_id[d.id] = encodings.pop(d.text)
            n, cut, starts = counter.points(by_id[d.id], len(d.text), cap, ctx.qfs_chunk_tokens)
            docs.append(SourceDocument(d.id, d.title, d.text[:cut], min(n, cap)))  # no title: no stand-in
            splits[d.id], rank[d.id], full[d.id] = starts, r, len(d.text)  # piece starts before the cut only
        if ctx.shuffle_documents:
            _rng(ctx, state["index"], "order").shuffle(docs)
        _, n, kept = fit_documents(counter, state["instruction"], docs, "", state["target_tokens"],
                                   ctx.doc_header, ctx.instruction_position, exact=False, encodings=by_id,
                                   reserve=ctx.answer_max_tokens)
        if not kept or 2 * ctx.answer_max_tokens > state["target_tokens"]:
            return _reject("retrieve", f"synth.answer_max_tokens={ctx.answer_max_tokens} leaves less than half of the "
                                       f"{state['target_tokens']}-token target for documents; lower it")
        if n < 0.98 * state["target_tokens"]:
            return _reject("retrieve", f"the index holds only {n - ctx.answer_max_tokens} tokens for a target of "
                                       f"{state['target_tokens']} less synth.answer_max_tokens={ctx.answer_max_tokens}")
        return {"documents": [{**vars(d), "splits": [c for c in splits[d.id] if c < len(d.text)], "rank": rank[d.id],
                               "cut": len(d.text) < full[d.id]} for d in kept]}

    return await asyncio.to_thread(work)


async def plan_qfs(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Level 0 of QFS: the documents packed into chunks of at most `qfs_chunk_tokens`, from the counts and
    piece boundaries `retrieve` measured (no document is encoded again)."""
    ctx = runtime.context
    every = ctx.qfs_chunk_tokens

    def work() -> list[str]:
        counter = resources(ctx).counter
        parts: list[tuple[str, int]] = []
        for i, d in enumerate(state["documents"]):
            doc_parts = split_counted(d["text"], d["n_tokens"], d["splits"], every) or [("", 0)]
            header = f"{document_header(ctx.doc_header, i + 1, d['title'])}\n"
            first, n = doc_parts[0]
            doc_parts[0] = (header + first, n + counter.count(header))
            parts.extend(doc_parts)
        return pack_parts(parts, every)

    return {"pieces": await asyncio.to_thread(work), "level": 0}


def fan_out(state: SynthState) -> list[Send]:
    """One summarize task per piece of the current level."""
    return [
        Send("summarize", SummarizeTask(instruction=state["instruction"], text=t, level=state["level"], index=i))
        for i, t in enumerate(state["pieces"])
    ]


async def summarize_piece(task: SummarizeTask, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Query-focused summary of one piece (None when nothing in it is relevant; an error when the endpoint gave
    no usable reply after the client's retries)."""
    entry = {"level": task["level"], "index": task["index"], "text": None, "error": None}
    try:
        entry["text"] = await summarize(resources(runtime.context).llm, task["instruction"], task["text"])
    except LLMFailure as err:
        entry["error"] = str(err)
    return {"summaries": [entry], "calls": 1}


async def collect(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Gather a level's summaries; summarize them again while they exceed the budget.

    A piece whose summary failed is dropped (the sample's provenance records it); the sample is rejected only
    when more than `max_dropped_share` of a level's pieces failed.
    """
    ctx = runtime.context
    level = state["level"]
    current = sorted((s for s in state["summaries"] if s["level"] == level), key=lambda s: s["index"])
    errors = [s["error"] for s in current if s["error"]]
    if len(errors) > ctx.max_dropped_share * len(current):
        return _reject("qfs", f"level {level}: {len(errors)} of {len(current)} summaries failed (more than "
                              f"synth.max_dropped_share={ctx.max_dropped_share}): {errors[0]}", "endpoint")
    texts = [s["text"] for s in current if s["text"]]
    if not texts:
        return _reject("qfs", "nothing relevant to the instruction in the retrieved documents")

    def measure() -> tuple[list[int], list[str]]:
        counter = resources(ctx).counter
        counts = [counter.count(t) for t in texts]
        if sum(counts) > ctx.qfs_budget_tokens and level + 1 < ctx.qfs_max_depth:
            return counts, pack(counter, texts, ctx.qfs_chunk_tokens, counts=counts)
        return counts, []

    counts, pieces = await asyncio.to_thread(measure)
    if pieces:
        return {"pieces": pieces, "level": level + 1}
    return {"pieces": [], "level": level + 1, "notes": texts, "notes_tokens": sum(counts)}


def after_collect(state: SynthState) -> str | list[Send]:
    """End on rejection, answer when the notes are ready, else summarize the next level."""
    if state.get("rejection"):
        return "end"
    if state.get("notes"):
        return "answer"
    return fan_out(state)


async def answer(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """The answer, written from the final summaries only (cut to the budget at the depth cap), at most
    `answer_max_tokens` long, confined to the notes and, with `cite`, pointing at the documents by the sample's own
    labels; with `verify`, a judge call rejects it as `ungrounded` when the notes do not support it."""
    ctx = runtime.context
    res = resources(ctx)
    notes = "\n\n".join(state["notes"])
    if state["notes_tokens"] > ctx.qfs_budget_tokens:  # the depth cap was reached above the budget
        notes = await asyncio.to_thread(lambda: res.counter.truncate(notes, ctx.qfs_budget_tokens))
    citations = CITE_RULE.format(label=document_header(ctx.doc_header, 3, "")) if ctx.cite else ""
    prompt = ANSWER_PROMPT.format(notes=notes, instruction=state["instruction"], citations=citations)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    try:
        text = await res.llm.text(messages, max_tokens=ctx.answer_max_tokens)
    except LLMFailure as err:
        return {"calls": 1, **_reject("answer", str(err), "endpoint")}
    if len(text.split()) < ctx.answer_min_words:
        return {"calls": 1, **_reject("answer", f"answer too short ({len(text.split())} words)")}
    if not ctx.verify:
        return {"answer": text, "calls": 1}
    try:
        verdict = await _judge(res, VERIFY_PROMPT.format(notes=notes, answer=text))
    except LLMFailure as err:
        return {"calls": 2, **_reject("verify", str(err), "endpoint")}
    if not verdict.supported:
        return {"calls": 2, **_reject("verify", f"ungrounded: {verdict.reason}")}
    return {"answer": text, "calls": 2, "verified": True}


def qfs_provenance(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Pieces summarized per level, and the pieces dropped because their summary failed (level, index, why)."""
    levels = max((e["level"] for e in summaries), default=-1) + 1
    dropped = sorted(({"level": e["level"], "index": e["index"], "reason": e["error"]}
                      for e in summaries if e["error"]), key=lambda e: (e["level"], e["index"]))
    return {"qfs_pieces": [sum(e["level"] == lv for e in summaries) for lv in range(levels)],
            "pieces_dropped": len(dropped), "dropped": dropped}


async def assemble(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Instruction + raw documents → answer: exactly the documents QFS read, none cut or dropped here (`retrieve`
    left the answer's reserve free), so the sample is at most its target length, shorter by what the answer left of
    its reserve. The finished conversation is counted once; an answer that overran the reserve is rejected."""
    ctx = runtime.context

    def work() -> dict[str, Any]:
        counter = resources(ctx).counter
        docs = [SourceDocument(d["id"], d["title"], d["text"], d["n_tokens"]) for d in state["documents"]]
        messages = messages_for(user_turn(state["instruction"], docs, ctx.doc_header, ctx.instruction_position),
                                state["answer"])
        n, answer_tokens = counter.count_messages(messages), counter.count(state["answer"])
        if n > state["target_tokens"]:
            return _reject("assemble", f"{n} tokens with the answer ({answer_tokens} tokens), over the target "
                                       f"{state['target_tokens']}: raise synth.answer_max_tokens="
                                       f"{ctx.answer_max_tokens}")
        documents = [{"id": d["id"], "rank": d.get("rank"), "position": i, "tokens": d["n_tokens"],
                      "cut": d.get("cut", False)} for i, d in enumerate(state["documents"], 1)]
        record = _record(ctx, state, "long_input", messages, n, [d.id for d in docs], state["instruction"],
                         seed_chunk=state["seed_chunk_id"], task_type=state.get("task_type"),
                         qfs_depth=state["level"], calls=state["calls"], **qfs_provenance(state["summaries"]),
                         documents=documents, answer_tokens=answer_tokens, verified=state.get("verified"))
        return {"sample": record, "rejection": None}

    return await asyncio.to_thread(work)


def route(next_step: str):
    """Edge function: END on rejection, else `next_step`."""

    def decide(state: dict[str, Any]) -> str:
        return "end" if state.get("rejection") else next_step

    return decide


# --- long-output (back-translation) ----------------------------------------------------------------


async def pick_document(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """A corpus document of `backtranslation_min_tokens`…`max_tokens` target tokens, chosen by index."""
    ctx = runtime.context
    res = resources(ctx)
    sid = ctx.sample_id("long_output", state["index"])

    def work() -> dict[str, Any]:
        store = res.retriever.store
        lo, hi = ctx.backtranslation_min_tokens, ctx.backtranslation_max_tokens
        # registry counts are in embedder tokens: a loose filter (sidecar lookups, whatever the index size), then
        # an exact count
        for doc_id in store.pick_documents(lo // 4, hi * 4, _rng(ctx, state["index"], "document"), 20):
            text = store.documents([doc_id])[doc_id]
            if lo <= res.counter.count(text) <= hi:
                return {"sample_id": sid, "documents": [{"id": doc_id, "title": "", "text": text}]}
        return {"sample_id": sid, **_reject("document", f"no document of {lo}-{hi} tokens found in the index")}

    return await asyncio.to_thread(work)


async def backtranslate(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """The writing instruction for which the document is the answer → sample."""
    ctx = runtime.context
    res = resources(ctx)
    doc = state["documents"][0]
    try:
        text = await back_translate(res.llm, doc["text"])
    except LLMFailure as err:
        return {"calls": 1, **_reject("backtranslate", str(err), "endpoint")}
    problem = (instruction_problem(text, ctx.instruction_min_words, ctx.instruction_max_words)
               or instruction_fits(text, doc["text"], doc.get("title", "")))
    if problem:
        return {"calls": 1, **_reject("backtranslate", problem)}
    calls, verified = 1, None
    if ctx.verify:  # a judge call: does the instruction ask for this kind of text?
        calls, verified = 2, True
        try:
            verdict = await _judge(res, INSTRUCTION_FIT_PROMPT.format(instruction=text, document=doc["text"]))
        except LLMFailure as err:
            return {"calls": 2, **_reject("verify", str(err), "endpoint")}
        if not verdict.supported:
            return {"calls": 2, **_reject("verify", f"the instruction does not fit the document: {verdict.reason}")}
    messages = messages_for(text, doc["text"])
    record = await asyncio.to_thread(
        lambda: _record(ctx, state, "long_output", messages, res.counter.count_messages(messages), [doc["id"]],
                        text, calls=calls, qfs_depth=0, seed_chunk=None, verified=verified,
                        answer_tokens=res.counter.count(doc["text"]))
    )
    return {"sample": record, "rejection": None, "calls": calls}


# --- ACER ------------------------------------------------------------------------------------------
# A retrieved sample is fitted twice: before reading, to its target less `answer_max_tokens` (the documents the
# reader ranks), and after, with the real answer in place (within 1% of the target, never over): a shorter answer
# leaves room for more of the documents gathered after them, a longer one cuts the tail — and the sample is rejected
# if that cut would drop a passage the reader saw. A given context is laid out as title-less documents of about
# `acer_chunk_tokens` each, cut at whitespace, under their headers ("Document 3"): those are the labels the reader
# cites. It is never cut: one that does not fit its target (when it has one) is rejected with the reason.


def _acer_documents(state: SynthState) -> list[SourceDocument]:
    return [SourceDocument(d["id"], d["title"], d["text"], d.get("n_tokens")) for d in state.get("documents", [])]


async def acer_context(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """The sample's documents: the given context cut at whitespace into labelled pieces, or documents retrieved for
    the question until they fill the target."""
    ctx = runtime.context
    res = resources(ctx)
    target = state.get("target_tokens")
    sid = ctx.sample_id("acer", state["index"], target)

    def given() -> dict[str, Any]:
        docs = [SourceDocument("", "", p) for p in text_pieces(res.counter, state["context"], ctx.acer_chunk_tokens)]
        if not docs:
            return {"sample_id": sid, **_reject("acer_context", "the given context is blank")}
        if target:
            n = res.counter.count_messages(acer_messages(state["question"], docs, "", ctx.doc_header))
            if n > target:
                return {"sample_id": sid, **_reject(
                    "acer_context", f"the given context and its question are {n} tokens, over the target of {target} "
                    "before any answer: a given context is never cut (shorten it, or give no target_tokens)")}
        return {"sample_id": sid, "documents": [vars(d) for d in docs]}

    def retrieved() -> dict[str, Any]:
        if target <= ctx.answer_max_tokens:
            return {"sample_id": sid, **_reject("acer_context", f"synth.answer_max_tokens={ctx.answer_max_tokens} "
                                                f"leaves no room for documents in a target of {target}")}
        found = res.retriever.gather(state["question"], target, res.counter.count)
        docs = [SourceDocument(d.id, d.title, d.text, n) for d, n in found]
        _, n, _ = fit_acer(res.counter, state["question"], docs, "", target, ctx.doc_header, exact=False)
        if n < 0.99 * target:
            return {"sample_id": sid, **_reject("acer_context", f"the index holds only {n} tokens for a target of "
                                                f"{target}")}
        return {"sample_id": sid, "documents": [vars(d) for d in docs]}  # all gathered: the final fit picks

    return await asyncio.to_thread(given if state.get("context") else retrieved)


async def acer_read(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Chunk the documents the reader may see, rank the chunks against the question, answer from the top-M with
    reasoning; each passage labelled by its document's header."""
    ctx = runtime.context
    res = resources(ctx)
    docs = _acer_documents(state)

    def rank() -> list[Passage]:
        if state.get("context"):  # each piece of a given context is one chunk
            passages = [Passage(i, 0, len(d.text), d.text) for i, d in enumerate(docs)]
        else:
            _, _, reading = fit_acer(res.counter, state["question"], docs, "",
                                     state["target_tokens"] - ctx.answer_max_tokens, ctx.doc_header, exact=False)
            passages = document_chunks(res.counter, [d.text for d in reading], ctx.acer_chunk_tokens)
        embedder = res.retriever.embedder if ctx.acer_ranker == "embedding" else None
        if embedder is not None:
            passages = cap_passages(passages, embedder, ctx.acer_chunk_tokens)
        order = rank_chunks(state["question"], [p.text for p in passages], ctx.acer_ranker, embedder)
        return [passages[i] for i in order[: ctx.acer_top_m]]

    top = await asyncio.to_thread(rank)
    labelled = [(document_header(ctx.doc_header, p.document + 1, docs[p.document].title), p.text) for p in top]
    try:
        reasoned = await acer_answer(res.llm, state["question"], labelled)
    except LLMFailure as err:
        return {"calls": 1, **_reject("acer_answer", str(err), "endpoint")}
    return {"answer": reasoned_target(reasoned), "passages": [vars(p) for p in top], "calls": 1}


async def acer_assemble(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Documents + question → reasoned answer; a retrieved sample refitted to its target with the answer in place."""
    ctx = runtime.context
    counter = resources(ctx).counter
    docs, target = _acer_documents(state), state.get("target_tokens")

    def work() -> dict[str, Any]:
        if state.get("context"):
            messages = acer_messages(state["question"], docs, state["answer"], ctx.doc_header)
            n, doc_ids = counter.count_messages(messages), []
            if target and n > target:
                return _reject("acer_assemble", f"the given context, its question and the answer are {n} tokens, "
                               f"over the target of {target}: a given context is never cut")
        else:
            messages, n, kept = fit_acer(counter, state["question"], docs, state["answer"], target, ctx.doc_header)
            lost = passages_left_out([Passage(**p) for p in state["passages"]], kept)
            if lost:
                label = document_header(ctx.doc_header, lost[0].document + 1, docs[lost[0].document].title)
                return _reject("acer_assemble", f"the answer ({counter.count(state['answer'])} tokens) outgrew "
                               f"synth.answer_max_tokens={ctx.answer_max_tokens}: a passage of {label!r} the reader "
                               f"saw no longer fits the target of {target}")
            if n < 0.99 * target:
                return _reject("acer_assemble", f"the documents fill only {n} tokens of a target of {target}")
            doc_ids = [d.id for d in kept]
        record = _record(ctx, state, "acer", messages, n, doc_ids, state["question"], calls=state["calls"],
                         qfs_depth=0, seed_chunk=None)
        return {"sample": record, "rejection": None}

    return await asyncio.to_thread(work)
