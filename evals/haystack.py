"""Filler text for needles: the digit-free documentation text of the passkey task, or any corpus the project
reads, repeated as long as a cell needs, cut into token windows that start at a sentence."""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Iterable

from agents.errors import InputError
from evals.prompting import PromptFormat

_SENTENCE_END = re.compile(r"[.!?](?=\s|\Z)")


def passkey_haystack(split: str = "train") -> str:
    """The passkey task's haystack: Python's pydoc topics (always installed), ASCII only, every digit
    replaced by `#` so a key's digits are the only ones in the text. "train": the first 90%, "eval": the rest."""
    from pydoc_data.topics import topics

    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    text = re.sub(r"[0-9]", "#", " ".join(topics[k] for k in sorted(topics)))
    text = re.sub(r"\s+", " ", text).encode("ascii", "ignore").decode()  # one byte per character
    cut = int(len(text) * 0.9)
    return text[:cut] if split == "train" else text[cut:]


def corpus_haystack(documents: Iterable, mask_digits: bool = False, max_chars: int = 50_000_000) -> str:
    """The texts of a corpus's documents (agents.corpus records), whitespace collapsed, joined by spaces,
    at most `max_chars` characters; digits masked with `#` when asked."""
    parts, total = [], 0
    for doc in documents:
        text = re.sub(r"\s+", " ", doc.read_text()).strip()
        if mask_digits:
            text = re.sub(r"[0-9]", "#", text)
        parts.append(text)
        total += len(text) + 1
        if total >= max_chars:
            break
    joined = " ".join(parts)[:max_chars]
    if not joined.strip():
        raise InputError("the haystack corpus has no text: point corpus.path at documents, or use "
                         "corpus=python_docs")
    return joined


def insert_at_sentence(text: str, needle: str, depth: float) -> str:
    """`text` with `needle` inserted at `depth` (0 = start, 1 = end), moved back to the previous sentence
    end so it never splits a sentence (as the NIAH harness walks back to the previous '.')."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], not {depth}")
    needle = needle.strip()
    at = int(len(text) * depth)
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= at + 1]
    at = ends[-1] if ends else 0
    head, tail = text[:at].rstrip(), text[at:].lstrip()
    return " ".join(p for p in (head, needle, tail) if p)


class Haystack:
    """A base text, tokenized once with the target's tokenizer, served as windows of whole tokens that
    begin at a sentence; the text repeats (joined by a space) when a window outruns it."""

    def __init__(self, text: str, fmt: PromptFormat) -> None:
        self.text = text
        spans = fmt.offsets(text)
        self.starts = [a for a, _ in spans]
        ends = [len(text) - len(text[m.end():].lstrip()) for m in _SENTENCE_END.finditer(text)]
        self.sentence_starts = [self._token_at(e) for e in ends if e < len(text)] or [0]

    def _token_at(self, char: int) -> int:
        """The token holding character `char` (the last one starting at or before it)."""
        return max(0, min(bisect.bisect_right(self.starts, char) - 1, len(self.starts) - 1))

    @property
    def tokens(self) -> int:
        """Tokens of one pass over the base text."""
        return len(self.starts)

    def random_start(self, rng: random.Random) -> int:
        """A token index where a sentence begins."""
        return self.sentence_starts[rng.randrange(len(self.sentence_starts))]

    def window(self, start: int, n_tokens: int) -> str:
        """About `n_tokens` tokens of text from token `start` on, wrapping around the base text."""
        pieces, s = [], start
        while n_tokens > 0:
            take = min(n_tokens, self.tokens - s)
            end = self.starts[s + take] if s + take < self.tokens else len(self.text)
            pieces.append(self.text[self.starts[s]:end].strip())
            n_tokens -= take
            s = 0
        return " ".join(p for p in pieces if p)
