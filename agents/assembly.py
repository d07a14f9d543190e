"""Step 6 of SelfLong synthesis: the training sample, fitted to its target length.

The user turn is the instruction plus the *raw* documents (never the summaries); the assistant
turn is the answer. Length is counted on the whole conversation in the target model's tokenizer and
chat template. Whole documents are kept while they fit; the first one that does not is cut to the
remaining budget, and the rest are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.tokens import ChatTokenCounter


@dataclass(frozen=True)
class SourceDocument:
    """A retrieved document as the sample carries it; `n_tokens` is its text's token count when already known
    (counted once, where it was retrieved), so fitting does not encode it again."""

    id: str
    title: str
    text: str
    n_tokens: int | None = None


def document_header(header: str, index: int, title: str) -> str:
    """The line above a document: `header` (e.g. "Document {index}: {title}") filled in; a document without a
    title gets the header without it ("Document 3"), never a file path or other stand-in."""
    if title.strip():
        return header.format(index=index, title=title.strip())
    return header.format(index=index, title="").strip(" \t:-–—|,;")


def user_turn(instruction: str, docs: Sequence[SourceDocument], header: str, position: str) -> str:
    """Documents, each under its header, with the instruction after them (or before, or both)."""
    body = "\n\n".join(f"{document_header(header, i + 1, d.title)}\n{d.text}" for i, d in enumerate(docs))
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


def _cut(counter: ChatTokenCounter, doc: SourceDocument, n_tokens: int, encoding: Any = None) -> SourceDocument | None:
    """The document's first `n_tokens` tokens (from its `encoding` when given, else one encode), or None when
    nothing but whitespace is left."""
    n_tokens = max(0, n_tokens)
    if encoding is None:
        _, cut, _ = counter.measure(doc.text, limit=n_tokens)
    else:
        _, cut, _ = counter.points(encoding, len(doc.text), n_tokens)
    text = doc.text[:cut]
    return SourceDocument(doc.id, doc.title, text, min(n_tokens, doc.n_tokens or n_tokens)) if text.strip() else None


def fit_documents(
    counter: ChatTokenCounter,
    instruction: str,
    docs: Sequence[SourceDocument],
    answer: str,
    target_tokens: int,
    header: str = "Document {index}: {title}",
    position: str = "after",
    exact: bool = True,
    encodings: Mapping[str, Any] | None = None,
    reserve: int = 0,
) -> tuple[list[dict[str, str]], int, list[SourceDocument]]:
    """Messages of at most `target_tokens` tokens holding as much of `docs` (in order) as fits, with `reserve`
    tokens left free (for an answer not yet written: the count returned includes the reserve).

    Each document costs its header, its `n_tokens` (counted here only when unknown) and a separator, plus the
    tokenizer's join slack (`ChatTokenCounter.join_slack`: what joining costs beyond the parts, so the first exact
    count nearly always fits); the first that does not fit is cut to the room left (from its encoding in
    `encodings`, by document id, else one encode of it) and the rest are dropped. With
    `exact`, the finished conversation is counted once (the count returned) and, where tokens did not add up
    across joins, the last document is cut until it fits; without, the count returned is the estimate.

    Returns (messages, token count, documents kept — the last possibly cut).
    """
    overhead = counter.count_messages(messages_for(user_turn(instruction, [], header, position), answer))
    separator = counter.count("\n\n") + counter.join_slack
    kept: list[SourceDocument] = []
    budget = target_tokens - reserve - overhead
    for doc in docs:
        if doc.n_tokens is None:
            doc = SourceDocument(doc.id, doc.title, doc.text, counter.count(doc.text))
        head = counter.count(f"{document_header(header, len(kept) + 1, doc.title)}\n") + separator
        if head + doc.n_tokens <= budget:
            kept.append(doc)
            budget -= head + doc.n_tokens
            continue
        if (cut := _cut(counter, doc, budget - head, (encodings or {}).get(doc.id))) is not None:
            kept.append(cut)
            budget -= head + cut.n_tokens
        break
    messages = messages_for(user_turn(instruction, kept, header, position), answer)
    if not exact:
        return messages, target_tokens - budget, kept
    limit = target_tokens - reserve
    for _ in range(8):  # tokens do not add up exactly across joins: correct until it fits
        n = counter.count_messages(messages)
        if n <= limit or not kept:
            return messages, n + reserve, kept
        last = kept.pop()
        if (cut := _cut(counter, last, last.n_tokens - (n - limit) - 2)) is not None:
            kept.append(cut)
        messages = messages_for(user_turn(instruction, kept, header, position), answer)
    return messages, counter.count_messages(messages) + reserve, kept
