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

from agents.acer import acer_answer, rank_chunks, reasoned_target
from agents.assembly import SourceDocument, document_header, fit_documents, messages_for
from agents.backtranslation import back_translate
from agents.instructions import instruction_problem, write_instruction
from agents.llm import LLMFailure
from agents.prompts import ANSWER_PROMPT, SYSTEM_PROMPT
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
    """Seed chunk → instruction; a failed, refused, bad or near-duplicate one is retried with the
    next seed chunk, up to `instruction_attempts` times."""
    ctx = runtime.context
    res = resources(ctx)
    sid = ctx.sample_id("long_input", state["index"], state["target_tokens"])
    store = await asyncio.to_thread(lambda: res.retriever.store)
    total = await asyncio.to_thread(store.chunk_count)  # the index sidecar's count, read once per process
    reason, cause = "no attempt", "content"
    index = state["index"]
    try:
        for attempt in range(ctx.instruction_attempts):
            chunk_id, chunk = await asyncio.to_thread(store.chunk_at, _rng(ctx, index, attempt).randrange(total))
            try:
                text = await write_instruction(res.llm, chunk)
            except LLMFailure as err:
                reason, cause = str(err), "endpoint"  # another attempt may succeed once the endpoint recovers
                continue
            reason = instruction_problem(text, ctx.instruction_min_words, ctx.instruction_max_words)
            if reason is None:
                # near-duplicates of lower indices only, decided once all of them are final: a sample's
                # instruction never depends on which samples finished first
                if res.order is not None:
                    await res.order.turn(index)
                similarity = await asyncio.to_thread(res.deduper.similar, text, index)
                if similarity >= ctx.dedup_threshold:
                    reason = f"near-duplicate instruction (3-gram Jaccard {similarity:.2f})"
                else:
                    res.deduper.add(text, index)
                    return {"sample_id": sid, "seed_chunk_id": chunk_id, "instruction": text, "calls": attempt + 1}
        return {"sample_id": sid, "calls": ctx.instruction_attempts, **_reject("instruction", reason, cause)}
    finally:
        if res.order is not None:
            res.order.settle(index)


async def retrieve(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Documents for the instruction until the assembled sample reaches its target length.

    Each document is encoded once here: that one encode gives its token count, its cut at
    `max_document_share` and where its QFS pieces begin; the counts travel on in the state.
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
        docs, splits, by_id = [], {}, {}
        for d, _ in found:
            by_id[d.id] = encodings.pop(d.text)
            n, cut, starts = counter.points(by_id[d.id], len(d.text), cap, ctx.qfs_chunk_tokens)
            docs.append(SourceDocument(d.id, d.title, d.text[:cut], min(n, cap)))  # no title: no stand-in
            splits[d.id] = starts  # piece starts before the cut only
        if ctx.shuffle_documents:
            _rng(ctx, state["index"], "order").shuffle(docs)
        _, n, kept = fit_documents(counter, state["instruction"], docs, "", state["target_tokens"],
                                   ctx.doc_header, ctx.instruction_position, exact=False, encodings=by_id)
        if n < 0.98 * state["target_tokens"]:
            return _reject("retrieve", f"the index holds only {n} tokens for a target of {state['target_tokens']}")
        return {"documents": [{**vars(d), "splits": [c for c in splits[d.id] if c < len(d.text)]} for d in kept]}

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
    """The answer, written from the final summaries only (cut to the budget at the depth cap)."""
    ctx = runtime.context
    res = resources(ctx)
    notes = "\n\n".join(state["notes"])
    if state["notes_tokens"] > ctx.qfs_budget_tokens:  # the depth cap was reached above the budget
        notes = await asyncio.to_thread(lambda: res.counter.truncate(notes, ctx.qfs_budget_tokens))
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": ANSWER_PROMPT.format(notes=notes, instruction=state["instruction"])}]
    try:
        text = await res.llm.text(messages)
    except LLMFailure as err:
        return {"calls": 1, **_reject("answer", str(err), "endpoint")}
    if len(text.split()) < ctx.answer_min_words:
        return {"calls": 1, **_reject("answer", f"answer too short ({len(text.split())} words)")}
    return {"answer": text, "calls": 1}


def qfs_provenance(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Pieces summarized per level, and the pieces dropped because their summary failed (level, index, why)."""
    levels = max((e["level"] for e in summaries), default=-1) + 1
    dropped = sorted(({"level": e["level"], "index": e["index"], "reason": e["error"]}
                      for e in summaries if e["error"]), key=lambda e: (e["level"], e["index"]))
    return {"qfs_pieces": [sum(e["level"] == lv for e in summaries) for lv in range(levels)],
            "pieces_dropped": len(dropped), "dropped": dropped}


async def assemble(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Instruction + raw documents → answer, fitted to the target length in the target tokenizer (the documents'
    counts come from `retrieve`; the finished conversation is counted once)."""
    ctx = runtime.context

    def work() -> dict[str, Any]:
        docs = [SourceDocument(d["id"], d["title"], d["text"], d["n_tokens"]) for d in state["documents"]]
        messages, n, kept = fit_documents(resources(ctx).counter, state["instruction"], docs, state["answer"],
                                          state["target_tokens"], ctx.doc_header, ctx.instruction_position)
        record = _record(ctx, state, "long_input", messages, n, [d.id for d in kept], state["instruction"],
                         seed_chunk=state["seed_chunk_id"], qfs_depth=state["level"], calls=state["calls"],
                         **qfs_provenance(state["summaries"]))
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
    problem = instruction_problem(text, ctx.instruction_min_words, ctx.instruction_max_words)
    if problem:
        return {"calls": 1, **_reject("backtranslate", problem)}
    messages = messages_for(text, doc["text"])
    record = await asyncio.to_thread(
        lambda: _record(ctx, state, "long_output", messages, res.counter.count_messages(messages), [doc["id"]],
                        text, calls=1, qfs_depth=0, seed_chunk=None)
    )
    return {"sample": record, "rejection": None, "calls": 1}


# --- ACER ------------------------------------------------------------------------------------------


async def acer_context(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Use the given long context, or retrieve documents for the question up to the target length."""
    ctx = runtime.context
    res = resources(ctx)
    sid = ctx.sample_id("acer", state["index"], state.get("target_tokens"))
    if state.get("context"):
        return {"sample_id": sid, "documents": []}

    def work() -> dict[str, Any]:
        found = res.retriever.gather(state["question"], state["target_tokens"], res.counter.count)
        docs = [SourceDocument(d.id, d.title, d.text, n) for d, n in found]
        _, _, kept = fit_documents(res.counter, state["question"], docs, "", state["target_tokens"],
                                   ctx.doc_header, "after", exact=False)
        body = "\n\n".join(f"{document_header(ctx.doc_header, i + 1, d.title)}\n{d.text}" for i, d in enumerate(kept))
        return {"sample_id": sid, "context": body, "documents": [vars(d) for d in kept]}

    return await asyncio.to_thread(work)


async def acer_read(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Chunk the context, rank chunks against the question, answer from the top-M with reasoning."""
    ctx = runtime.context
    res = resources(ctx)

    def rank() -> list[str]:
        chunks = res.counter.split(state["context"], ctx.acer_chunk_tokens)
        embedder = res.retriever.embedder if ctx.acer_ranker == "embedding" else None
        order = rank_chunks(state["question"], chunks, ctx.acer_ranker, embedder)
        return [chunks[i] for i in order[: ctx.acer_top_m]]

    top = await asyncio.to_thread(rank)
    try:
        reasoned = await acer_answer(res.llm, state["question"], top)
    except LLMFailure as err:
        return {"calls": 1, **_reject("acer_answer", str(err), "endpoint")}
    return {"answer": reasoned_target(reasoned), "calls": 1}


async def acer_assemble(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Full context + question → reasoned answer."""
    ctx = runtime.context
    messages = messages_for(f"{state['context']}\n\nQuestion: {state['question']}", state["answer"])
    record = await asyncio.to_thread(
        lambda: _record(ctx, state, "acer", messages, resources(ctx).counter.count_messages(messages),
                        [d["id"] for d in state.get("documents", [])], state["question"], calls=state["calls"],
                        qfs_depth=0, seed_chunk=None)
    )
    return {"sample": record, "rejection": None}
