"""Split a document into overlapping windows of tokens, counted with a real tokenizer.

A chunk's text is an exact slice of the document: chunk 0 starts at character 0, every later chunk
at its first token, and each chunk ends where the token after its last one starts (the final chunk
at the end of the text). Consecutive chunks therefore overlap by exactly `overlap_tokens` tokens
and together cover every character, so `stitch()` rebuilds the document from its chunks.

The text arrives in blocks and is tokenized in segments cut at whitespace, so a document of any
size is chunked in bounded memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from agents.errors import InputError


@dataclass(frozen=True)
class Chunk:
    """A window of a document: `text == document[start:end]`, holding `n_tokens` tokens."""

    index: int
    text: str
    start: int
    end: int
    token_start: int
    n_tokens: int


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A fast tokenizer from a local folder (or tokenizer.json), without truncation or padding."""
    path = Path(path).expanduser()
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    elif (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif path.is_dir():
        from transformers import AutoTokenizer

        try:
            slow = AutoTokenizer.from_pretrained(str(path))
        except Exception as err:
            raise InputError(f"could not load a tokenizer from {path}: {err}") from err
        tokenizer = Tokenizer.from_str(slow.backend_tokenizer.to_str())
    else:
        raise InputError(
            f"tokenizer path {path} does not exist: set chunker.tokenizer to a local model folder "
            "(or leave it null to use the embedder's tokenizer)"
        )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TokenChunker:
    """Cuts text into chunks of `chunk_tokens` tokens overlapping by `overlap_tokens`."""

    def __init__(
        self,
        tokenizer: str | Path | Tokenizer,
        chunk_tokens: int = 200,
        overlap_tokens: int = 20,
        segment_chars: int = 1 << 16,
    ) -> None:
        if not 0 <= overlap_tokens < chunk_tokens:
            raise InputError(
                f"chunker.overlap_tokens={overlap_tokens} must be >= 0 and smaller than "
                f"chunker.chunk_tokens={chunk_tokens}"
            )
        self.tokenizer_name = str(tokenizer) if not isinstance(tokenizer, Tokenizer) else "custom"
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.segment_chars = segment_chars

    def settings(self) -> dict[str, int | str]:
        """What decides chunk boundaries; a store refuses to mix two different settings."""
        return {
            "chunk_tokens": self.chunk_tokens,
            "overlap_tokens": self.overlap_tokens,
            "tokenizer": Path(self.tokenizer_name).name,
        }

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text`, without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chunks(self, blocks: Iterable[str] | str) -> Iterator[Chunk]:
        """Chunk a text given whole or as consecutive blocks; yields nothing for a blank text."""
        if isinstance(blocks, str):
            blocks = [blocks]
        size, stride = self.chunk_tokens, self.chunk_tokens - self.overlap_tokens
        starts: deque[int] = deque()  # document offset of each token not yet dropped
        first_token = 0  # document token index of starts[0]
        text, base = "", 0  # document characters from offset `base` on, still needed
        index = 0
        length = 0
        for segment in self._segments(blocks):
            encoding = self.tokenizer.encode(segment, add_special_tokens=False)
            starts.extend(length + s for s, _ in encoding.offsets)
            text += segment
            length += len(segment)
            while len(starts) > size:
                start = 0 if index == 0 else starts[0]
                end = starts[size]
                yield Chunk(index, text[start - base : end - base], start, end, first_token, size)
                index += 1
                for _ in range(stride):
                    starts.popleft()
                first_token += stride
            if index > 0:  # forget the characters no future chunk needs
                text, base = text[starts[0] - base :], starts[0]
        if starts:
            start = 0 if index == 0 else starts[0]
            yield Chunk(index, text[start - base :], start, length, first_token, len(starts))

    def _segments(self, blocks: Iterable[str]) -> Iterator[str]:
        """Re-cut blocks into segments of about `segment_chars`, each ending before whitespace."""
        pending = ""
        for block in blocks:
            pending += block
            while len(pending) >= self.segment_chars:
                cut = _cut_before_whitespace(pending, self.segment_chars)
                yield pending[:cut]
                pending = pending[cut:]
        if pending:
            yield pending


def _cut_before_whitespace(text: str, limit: int) -> int:
    """The last position <= limit where a whitespace character starts (or `limit` if none near)."""
    for i in range(limit, max(0, limit - 65536), -1):
        if text[i - 1].isspace():
            return i - 1 if i > 1 else limit
    return limit


def stitch(chunks: Sequence[Chunk]) -> str:
    """Rebuild a document's text from all its chunks (in any order)."""
    out: list[str] = []
    end = 0
    for chunk in sorted(chunks, key=lambda c: c.index):
        out.append(chunk.text[end - chunk.start :])
        end = chunk.end
    return "".join(out)
