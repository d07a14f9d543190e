"""ACER (Gao et al., arXiv 2410.09141): rank the chunks of a long context against the question,
answer from the top-M with step-by-step reasoning; the sample pairs the *full* context with it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agents.embedder import Embedder
from agents.errors import InputError
from agents.llm import LLMClient
from agents.prompts import ACER_PROMPT, SYSTEM_PROMPT
from agents.schemas import ReasonedAnswer


def rank_chunks(question: str, chunks: Sequence[str], ranker: str, embedder: Embedder | None = None) -> list[int]:
    """Chunk indices, most relevant first: cosine of embeddings ("embedding") or BM25 ("bm25")."""
    if not chunks:
        return []
    if ranker == "embedding":
        if embedder is None:
            raise ValueError("the embedding ranker needs an embedder")
        scores = embedder.embed_documents(list(chunks)) @ embedder.embed_queries([question])[0]
        return [int(i) for i in np.argsort(-scores, kind="stable")]
    if ranker == "bm25":
        from langchain_community.retrievers import BM25Retriever

        retriever = BM25Retriever.from_texts(list(chunks), metadatas=[{"i": i} for i in range(len(chunks))])
        retriever.k = len(chunks)
        return [d.metadata["i"] for d in retriever.invoke(question)]
    raise InputError(f"synth.acer_ranker must be 'embedding' or 'bm25', not {ranker!r}")


async def acer_answer(llm: LLMClient, question: str, passages: Sequence[str]) -> ReasonedAnswer:
    """The reasoned answer from the top passages (numbered in the prompt)."""
    joined = "\n\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages))
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": ACER_PROMPT.format(passages=joined, question=question)},
    ]
    return await llm.json(messages, ReasonedAnswer)


def reasoned_target(answer: ReasonedAnswer) -> str:
    """The assistant turn the model is trained to produce: reasoning, then the answer."""
    return f"{answer.reasoning.strip()}\n\nAnswer: {answer.answer.strip()}"


def read_acer_inputs(path: str | Path) -> list[dict[str, str]]:
    """(question, context) records of a JSONL file; `context` may be absent (then retrieved)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"synth.acer_input {path} does not exist: give a JSONL file of {{question, context}}")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{lineno} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("question"), str):
                raise InputError(f"{path}:{lineno} needs a string field 'question'")
            records.append({"question": record["question"], "context": record.get("context") or ""})
    if not records:
        raise InputError(f"synth.acer_input {path} holds no records")
    return records
