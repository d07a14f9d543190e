"""ACER (Gao et al., arXiv 2410.09141): rank the chunks of a long context against the question,
answer from the top-M with step-by-step reasoning; the sample pairs the *full* context with it.

Passages are labelled in the reader's prompt by the header of the document they come from (`document_header`,
the sample's `synth.doc_header`), the same line that heads that document in the training input, so the reasoning
the model is trained on cites labels its input has. Chunks are cut at whitespace; for the embedding ranker none
is longer than the embedder reads (`max_seq_length`, counted in its own tokenizer): longer ones are split, with a
warning naming `synth.acer_chunk_tokens`. BM25 scores words (NFKC-normalised, case-folded unicode words), not
whitespace-separated strings.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.assembly import SourceDocument, fit_documents, messages_for, user_turn
from agents.embedder import Embedder, SentenceTransformerEmbedder
from agents.errors import InputError
from agents.llm import LLMClient
from agents.prompts import ACER_PROMPT, SYSTEM_PROMPT
from agents.schemas import ReasonedAnswer
from agents.tokens import ChatTokenCounter

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
_warned: set[tuple[str, int, int]] = set()  # (embedder, acer_chunk_tokens, limit) already warned about


@dataclass(frozen=True)
class Passage:
    """A chunk the ranker scores: `text == documents[document][start:end]` (document 0-based, in sample order)."""

    document: int
    start: int
    end: int
    text: str


def whitespace_spans(text: str, starts: Sequence[int], n_tokens: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) character spans covering `text`, each holding at most `n_tokens` of the tokens that
    begin at `starts` (character offsets, ascending), cut at the last whitespace before the limit (mid-word only
    where a span has no whitespace); every span but the first begins with the whitespace it was cut at."""
    if n_tokens < 1:
        raise ValueError(f"a chunk needs at least one token, not {n_tokens}")
    spans, a, i = [], 0, 0
    while len(starts) - i > n_tokens:
        end = starts[i + n_tokens]
        if end <= starts[i]:  # tokens sharing an offset (byte fallback): the next one that moves on
            j = bisect.bisect_right(starts, starts[i], lo=i + n_tokens)
            if j == len(starts):
                break
            end = starts[j]
        low = max(a, starts[i])  # the cut leaves at least one token in the span
        cut = next((c for c in range(end, low, -1) if text[c].isspace()), end)
        while cut - 1 > low and text[cut - 1].isspace():  # at the start of the whitespace run
            cut -= 1
        spans.append((a, cut))
        a, i = cut, bisect.bisect_left(starts, cut, lo=i + 1)
    if a < len(text):
        spans.append((a, len(text)))
    return spans


def text_pieces(counter: ChatTokenCounter, text: str, n_tokens: int) -> list[str]:
    """`text` cut at whitespace into pieces of at most about `n_tokens` target tokens, each stripped (whitespace-only
    pieces dropped): a given context laid out as labelled documents, nothing of it left out."""
    starts = [s for s, _ in counter.encode(text).offsets]
    return [p for a, b in whitespace_spans(text, starts, n_tokens) if (p := text[a:b].strip())]


def document_chunks(counter: ChatTokenCounter, texts: Sequence[str], n_tokens: int) -> list[Passage]:
    """Each document's text cut at whitespace into chunks of at most about `n_tokens` target tokens (a chunk never
    spans two documents, so it has one label); whitespace-only chunks are left out."""
    chunks = []
    for d, text in enumerate(texts):
        starts = [s for s, _ in counter.encode(text).offsets]
        chunks.extend(Passage(d, a, b, text[a:b]) for a, b in whitespace_spans(text, starts, n_tokens)
                      if text[a:b].strip())
    return chunks


def ranker_limit(embedder: Embedder) -> int | None:
    """The most tokens (special ones included) the embedder reads of a text; None when unknown (an endpoint)."""
    limit = getattr(embedder, "max_seq_length", None)
    if limit is None and isinstance(embedder, SentenceTransformerEmbedder):
        limit = embedder.model.max_seq_length
    return int(limit) if limit else None


@functools.lru_cache(maxsize=4)
def _embedder_tokenizer(path: str):
    from agents.chunker import load_tokenizer

    return load_tokenizer(path)


def cap_passages(passages: Sequence[Passage], embedder: Embedder, chunk_tokens: int) -> list[Passage]:
    """`passages` with every one longer than the embedder reads (its `max_seq_length`, counted in its own tokenizer
    with its document prefix and special tokens) split at whitespace into pieces it reads whole; warns once per
    setting when any was. Unchanged when the embedder's limit is unknown."""
    limit = ranker_limit(embedder)
    if limit is None or not passages:
        return list(passages)
    tokenizer = _embedder_tokenizer(embedder.tokenizer_path)
    prefix = getattr(embedder, "document_prefix", "") or ""
    room = limit - len(tokenizer.encode(prefix, add_special_tokens=True))  # specials and prefix come off the top
    if room < 1:
        raise InputError(f"the embedder {embedder.name} reads {limit} tokens, no more than its document prefix and "
                         "special tokens: use another embedder for synth.acer_ranker=embedding")
    out, longest = [], 0
    todo = list(reversed(passages))
    while todo:
        p = todo.pop()
        starts = [s for s, _ in tokenizer.encode(p.text, add_special_tokens=False).offsets]
        if len(starts) <= room:
            out.append(p)
            continue
        longest = max(longest, len(starts))
        spans = whitespace_spans(p.text, starts, room)
        # each piece is counted again (a piece may tokenize a little differently alone): split further if needed
        todo.extend(reversed([Passage(p.document, p.start + a, p.start + b, p.text[a:b]) for a, b in spans
                              if p.text[a:b].strip()]))
    key = (embedder.name, chunk_tokens, limit)
    if longest and key not in _warned:
        _warned.add(key)
        log.warning(
            "synth.acer_chunk_tokens=%d makes chunks of up to %d tokens of the embedder %s, which reads only %d "
            "(its max_seq_length, special tokens included): chunks are split to fit it; lower "
            "synth.acer_chunk_tokens so that no chunk needs splitting", chunk_tokens, longest, embedder.name, limit)
    return out


def words(text: str) -> list[str]:
    """BM25's terms: the unicode words of the NFKC-normalised, case-folded text (punctuation never sticks to a
    word). No stopword list: BM25's IDF weighs common words down in any language."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def rank_chunks(question: str, chunks: Sequence[str], ranker: str, embedder: Embedder | None = None) -> list[int]:
    """Chunk indices, most relevant first: cosine of embeddings ("embedding") or BM25 Okapi over `words` ("bm25");
    ties keep chunk order."""
    if not chunks:
        return []
    if ranker == "embedding":
        if embedder is None:
            raise ValueError("the embedding ranker needs an embedder")
        scores = embedder.embed_documents(list(chunks)) @ embedder.embed_queries([question])[0]
        return [int(i) for i in np.argsort(-scores, kind="stable")]
    if ranker == "bm25":
        from rank_bm25 import BM25Okapi

        corpus, query = [words(c) for c in chunks], words(question)
        if not query or not any(corpus):
            return list(range(len(chunks)))
        scores = np.asarray(BM25Okapi(corpus).get_scores(query))
        return [int(i) for i in np.argsort(-scores, kind="stable")]
    raise InputError(f"synth.acer_ranker must be 'embedding' or 'bm25', not {ranker!r}")


async def acer_answer(llm: LLMClient, question: str, passages: Sequence[tuple[str, str]]) -> ReasonedAnswer:
    """The reasoned answer from the top passages, each given as (label, text): the label is the header of the
    document it comes from in the training input."""
    joined = "\n".join(f"<passage>\n{label}\n{text.strip()}\n</passage>" for label, text in passages)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": ACER_PROMPT.format(passages=joined, question=question)},
    ]
    return await llm.json(messages, ReasonedAnswer)


def question_turn(question: str) -> str:
    """What follows the documents in the user turn."""
    return f"Question: {question}"


def acer_messages(question: str, docs: Sequence[SourceDocument], answer: str, header: str) -> list[dict[str, str]]:
    """The sample's conversation: every document under its header, then the question; the reasoned answer."""
    return messages_for(user_turn(question_turn(question), docs, header, "after"), answer)


def fit_acer(counter: ChatTokenCounter, question: str, docs: Sequence[SourceDocument], answer: str,
             target_tokens: int, header: str, exact: bool = True) -> tuple[list[dict[str, str]], int,
                                                                           list[SourceDocument]]:
    """`fit_documents` with the question after the documents: at most `target_tokens` with `answer` in place
    (with "" and the target less the answer's reserve: the documents a reader may see)."""
    return fit_documents(counter, question_turn(question), docs, answer, target_tokens, header, "after", exact)


def passages_left_out(passages: Sequence[Passage], kept: Sequence[SourceDocument]) -> list[Passage]:
    """The passages whose text the kept documents (a prefix of the sample's, the last possibly cut) no longer hold."""
    return [p for p in passages if p.document >= len(kept) or len(kept[p.document].text) < p.end]


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
