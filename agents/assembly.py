"""Step 6 of SelfLong synthesis: the training sample, fitted to its target length.

The user turn is the instruction plus the *raw* documents (never the summaries); the assistant
turn is the answer. Length is counted on the whole conversation in the target model's tokenizer and
chat template. Whole documents are kept while they fit; the first one that does not is cut to the
remaining budget, and the rest are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agents.tokens import ChatTokenCounter


@dataclass(frozen=True)
class SourceDocument:
    """A retrieved document as the sample carries it."""

    id: str
    title: str
    text: str


def user_turn(instruction: str, docs: Sequence[SourceDocument], header: str, position: str) -> str:
    """Documents, each under its header, with the instruction after them (or before, or both)."""
    body = "\n\n".join(f"{header.format(index=i + 1, title=d.title)}\n{d.text}" for i, d in enumerate(docs))
    if position == "before":
        return f"{instruction}\n\n{body}"
    if position == "both":
        return f"{instruction}\n\n{body}\n\n{instruction}"
    if position == "after":
        return f"{body}\n\n{instruction}"
    raise ValueError(f"synth.instruction_position must be before, after or both, not {position!r}")


def messages_for(user: str, answer: str) -> list[dict[str, str]]:
    """The two-turn conversation of a sample."""
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def fit_documents(
    counter: ChatTokenCounter,
    instruction: str,
    docs: Sequence[SourceDocument],
    answer: str,
    target_tokens: int,
    header: str = "Document {index}: {title}",
    position: str = "after",
) -> tuple[list[dict[str, str]], int, list[SourceDocument]]:
    """Messages of at most `target_tokens` tokens holding as much of `docs` (in order) as fits.

    Returns (messages, token count, documents kept — the last possibly cut).
    """
    overhead = counter.count_messages(messages_for(user_turn(instruction, [], header, position), answer))
    kept: list[SourceDocument] = []
    budget = target_tokens - overhead
    for doc in docs:
        cost = counter.count(f"{header.format(index=len(kept) + 1, title=doc.title)}\n{doc.text}\n\n")
        if cost <= budget:
            kept.append(doc)
            budget -= cost
            continue
        room = budget - counter.count(header.format(index=len(kept) + 1, title=doc.title)) - 4
        cut = counter.truncate(doc.text, room)
        if cut.strip():
            kept.append(SourceDocument(doc.id, doc.title, cut))
        break
    for _ in range(8):  # tokens do not add up exactly across joins: correct until it fits
        messages = messages_for(user_turn(instruction, kept, header, position), answer)
        n = counter.count_messages(messages)
        if n <= target_tokens or not kept:
            return messages, n, kept
        last = kept[-1]
        shorter = counter.truncate(last.text, max(0, counter.count(last.text) - (n - target_tokens) - 2))
        kept[-1:] = [SourceDocument(last.id, last.title, shorter)] if shorter.strip() else []
    return messages, n, kept
