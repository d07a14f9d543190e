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
from agents.assembly import SourceDocument, fit_documents, messages_for
from agents.backtranslation import back_translate
from agents.instructions import instruction_problem, write_instruction
from agents.llm import LLMFailure
from agents.prompts import ANSWER_PROMPT, SYSTEM_PROMPT
from agents.qfs import pack, summarize
from graphs.context import SynthContext
from graphs.resources import resources
from graphs.state import SummarizeTask, SynthState


def _reject(step: str, reason: str) -> dict[str, Any]:
    return {"rejection": {"step": step, "reason": reason}, "sample": None}


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
    total = await asyncio.to_thread(store.chunks.count)
    reason = "no attempt"
    index = state["index"]
    try:
        for attempt in range(ctx.instruction_attempts):
            chunk_id, chunk = await asyncio.to_thread(store.chunk_at, _rng(ctx, index, attempt).randrange(total))
            try:
                text = await write_instruction(res.llm, chunk)
            except LLMFailure as err:
                reason = str(err)
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
        return {"sample_id": sid, "calls": ctx.instruction_attempts, **_reject("instruction", reason)}
    finally:
        if res.order is not None:
            res.order.settle(index)


async def retrieve(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Documents for the instruction until the assembled sample reaches its target length."""
    ctx = runtime.context
    res = resources(ctx)

    def work() -> dict[str, Any]:
        counter = res.counter
        cap = max(1, int(ctx.max_document_share * state["target_tokens"]))
        found = res.retriever.gather(state["instruction"], state["target_tokens"], counter.count, cap)
        docs = [SourceDocument(d.id, d.title or d.source, counter.truncate(d.text, cap) if n > cap else d.text)
                for d, n in found]
        if ctx.shuffle_documents:
            _rng(ctx, state["index"], "order").shuffle(docs)
        _, n, kept = fit_documents(counter, state["instruction"], docs, "", state["target_tokens"],
                                   ctx.doc_header, ctx.instruction_position)
        if n < 0.98 * state["target_tokens"]:
            return _reject("retrieve", f"the index holds only {n} tokens for a target of {state['target_tokens']}")
        return {"documents": [vars(d) for d in kept]}

    return await asyncio.to_thread(work)


async def plan_qfs(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Level 0 of QFS: the documents packed into chunks of at most `qfs_chunk_tokens`."""
    ctx = runtime.context
    texts = [f"{ctx.doc_header.format(index=i + 1, title=d['title'])}\n{d['text']}"
             for i, d in enumerate(state["documents"])]
    pieces = await asyncio.to_thread(lambda: pack(resources(ctx).counter, texts, ctx.qfs_chunk_tokens))
    return {"pieces": pieces, "level": 0}


def fan_out(state: SynthState) -> list[Send]:
    """One summarize task per piece of the current level."""
    return [
        Send("summarize", SummarizeTask(instruction=state["instruction"], text=t, level=state["level"], index=i))
        for i, t in enumerate(state["pieces"])
    ]


async def summarize_piece(task: SummarizeTask, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Query-focused summary of one piece (None when nothing in it is relevant)."""
    entry = {"level": task["level"], "index": task["index"], "text": None, "error": None}
    try:
        entry["text"] = await summarize(resources(runtime.context).llm, task["instruction"], task["text"])
    except LLMFailure as err:
        entry["error"] = str(err)
    return {"summaries": [entry], "calls": 1}


async def collect(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Gather a level's summaries; summarize them again while they exceed the budget."""
    ctx = runtime.context
    level = state["level"]
    current = sorted((s for s in state["summaries"] if s["level"] == level), key=lambda s: s["index"])
    errors = [s["error"] for s in current if s["error"]]
    if errors:
        return _reject("qfs", f"level {level}: {len(errors)} summaries failed: {errors[0]}")
    texts = [s["text"] for s in current if s["text"]]
    if not texts:
        return _reject("qfs", "nothing relevant to the instruction in the retrieved documents")
    total = await asyncio.to_thread(lambda: sum(resources(ctx).counter.count(t) for t in texts))
    if total > ctx.qfs_budget_tokens and level + 1 < ctx.qfs_max_depth:
        pieces = await asyncio.to_thread(lambda: pack(resources(ctx).counter, texts, ctx.qfs_chunk_tokens))
        return {"pieces": pieces, "level": level + 1}
    return {"pieces": [], "level": level + 1, "notes": texts}


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
    notes = await asyncio.to_thread(lambda: res.counter.truncate(notes, ctx.qfs_budget_tokens))
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": ANSWER_PROMPT.format(notes=notes, instruction=state["instruction"])}]
    try:
        text = await res.llm.text(messages)
    except LLMFailure as err:
        return {"calls": 1, **_reject("answer", str(err))}
    if len(text.split()) < ctx.answer_min_words:
        return {"calls": 1, **_reject("answer", f"answer too short ({len(text.split())} words)")}
    return {"answer": text, "calls": 1}


async def assemble(state: SynthState, runtime: Runtime[SynthContext]) -> dict[str, Any]:
    """Instruction + raw documents → answer, fitted to the target length in the target tokenizer."""
    ctx = runtime.context

    def work() -> dict[str, Any]:
        docs = [SourceDocument(**d) for d in state["documents"]]
        messages, n, kept = fit_documents(resources(ctx).counter, state["instruction"], docs, state["answer"],
                                          state["target_tokens"], ctx.doc_header, ctx.instruction_position)
        record = _record(ctx, state, "long_input", messages, n, [d.id for d in kept], state["instruction"],
                         seed_chunk=state["seed_chunk_id"], qfs_depth=state["level"], calls=state["calls"])
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
        # registry counts are in embedder tokens: a loose filter, then an exact count
        ids = sorted(store.docs.get(where={"n_tokens": {"$gte": lo // 4}}, include=[])["ids"])
        rng = _rng(ctx, state["index"], "document")
        for doc_id in rng.sample(ids, min(len(ids), 20)):
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
        return {"calls": 1, **_reject("backtranslate", str(err))}
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
        docs = [SourceDocument(d.id, d.title or d.source, d.text) for d, _ in found]
        _, _, kept = fit_documents(res.counter, state["question"], docs, "", state["target_tokens"],
                                   ctx.doc_header, "after")
        body = "\n\n".join(f"{ctx.doc_header.format(index=i + 1, title=d.title)}\n{d.text}" for i, d in enumerate(kept))
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
        return {"calls": 1, **_reject("acer_answer", str(err))}
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
