"""Corpus readers: turn files or the built-in Python documentation into `Document` records.

A record is `{id, text, source, meta}` (DESIGN.md); `id` is a content hash of the text, so the
same text read twice, from anywhere, is the same document. Readers are lazy iterators: nothing is
read before iteration, and a file larger than `stream_above_bytes` is never held in memory — its
record carries the path and its text is read in blocks by `Document.blocks()`.
Files that cannot be read as UTF-8 text are skipped and listed in `corpus.skipped`.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import inspect
import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import InputError

log = logging.getLogger(__name__)

READ_BYTES = 1 << 20  # bytes per read when hashing or streaming a file


def content_id(text: str) -> str:
    """Content hash of a text: the first 32 hex digits of the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Document:
    """One corpus record. `text` is None for a streamed file; then `path` holds it."""

    id: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    path: Path | None = None

    def blocks(self, block_chars: int = READ_BYTES) -> Iterator[str]:
        """Yield the text in pieces of about `block_chars` characters, reading a file lazily."""
        if self.text is not None:
            for start in range(0, len(self.text), block_chars):
                yield self.text[start : start + block_chars]
            return
        assert self.path is not None
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        with open(self.path, "rb") as f:
            while raw := f.read(block_chars):
                if piece := decoder.decode(raw):
                    yield piece
            if tail := decoder.decode(b"", final=True):
                yield tail

    def read_text(self) -> str:
        """The whole text (reads a streamed file into memory: use `blocks()` for big ones)."""
        return self.text if self.text is not None else "".join(self.blocks())


class _Skip(Exception):
    """Raised inside a reader for an input that is skipped; the message is the reason."""


class FileCorpus:
    """Documents from a file or a folder (searched recursively, hidden entries ignored).

    `.txt`/`.md` files are one document each; `.jsonl` files one document per line (the string in
    `text_field`); `.parquet` files one document per row (column `text_field`).
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        text_field: str = "text",
        extensions: Sequence[str] = (".txt", ".md", ".jsonl", ".parquet"),
        stream_above_bytes: int = 64 << 20,
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name or self.path.stem or "corpus"
        self.text_field = text_field
        self.extensions = tuple(e.lower() for e in extensions)
        self.stream_above_bytes = stream_above_bytes
        self.skipped: list[tuple[str, str]] = []  # (source, reason)

    def describe(self) -> str:
        """Where the documents come from, for messages."""
        return f"corpus path {self.path}"

    def __iter__(self) -> Iterator[Document]:
        if not self.path.exists():
            raise InputError(
                f"corpus path {self.path} does not exist: set corpus.path to a file or folder of "
                f"{', '.join(self.extensions)} files"
            )
        self.skipped = []
        for file in self._files():
            try:
                yield from self._read(file)
            except _Skip as why:
                self._skip(str(file), str(why))

    def _files(self) -> Iterator[Path]:
        if self.path.is_file():
            yield self.path
            return
        for file in sorted(self.path.rglob("*")):
            rel = file.relative_to(self.path)
            if any(part.startswith(".") for part in rel.parts) or not file.is_file():
                continue
            yield file

    def _skip(self, source: str, reason: str) -> None:
        self.skipped.append((source, reason))
        log.debug("skipped %s: %s", source, reason)

    def _read(self, file: Path) -> Iterator[Document]:
        suffix = file.suffix.lower()
        if suffix not in self.extensions:
            raise _Skip(f"extension {suffix or '(none)'} is not one of {', '.join(self.extensions)}")
        if suffix == ".jsonl":
            yield from self._read_jsonl(file)
        elif suffix == ".parquet":
            yield from self._read_parquet(file)
        elif file.stat().st_size > self.stream_above_bytes:
            yield self._streamed_text_file(file)
        else:
            text = _decode_text(file.read_bytes())
            if not text.strip():
                raise _Skip("empty document")
            yield Document(content_id(text), str(file), {"title": file.stem}, text=text)

    def _streamed_text_file(self, file: Path) -> Document:
        """Hash and validate a big file in one streaming pass; its text stays on disk."""
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        blank = True
        offset = 0
        with open(file, "rb") as f:
            while raw := f.read(READ_BYTES):
                if offset == 0 and b"\x00" in raw[:8192]:
                    raise _Skip("binary file (NUL bytes)")
                try:
                    piece = decoder.decode(raw)
                except UnicodeDecodeError as err:
                    raise _Skip(f"not UTF-8 text (byte {offset + err.start})") from None
                blank = blank and not piece.strip()
                digest.update(raw)
                offset += len(raw)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _Skip("not UTF-8 text (truncated character at the end)") from None
        if blank:
            raise _Skip("empty document")
        meta = {"title": file.stem, "bytes": offset}
        return Document(digest.hexdigest()[:32], str(file), meta, text=None, path=file)

    def _read_jsonl(self, file: Path) -> Iterator[Document]:
        with open(file, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                source = f"{file}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    record = json.loads(_decode_text(raw))
                except _Skip as why:
                    self._skip(source, str(why))
                    continue
                except json.JSONDecodeError as err:
                    self._skip(source, f"invalid JSON ({err.msg})")
                    continue
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    self._skip(source, f"no string field {self.text_field!r} (set corpus.text_field)")
                    continue
                if not text.strip():
                    self._skip(source, "empty document")
                    continue
                meta = {k: v for k, v in record.items() if k != self.text_field and _is_scalar(v)}
                yield Document(content_id(text), source, meta, text=text)

    def _read_parquet(self, file: Path) -> Iterator[Document]:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(file)
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise _Skip(f"not a readable parquet file ({err})") from None
        if self.text_field not in table.schema_arrow.names:
            raise _Skip(
                f"no column {self.text_field!r} (columns: {', '.join(table.schema_arrow.names)}; "
                "set corpus.text_field)"
            )
        row = 0
        for batch in table.iter_batches(batch_size=1024, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                source = f"{file}#{row}"
                row += 1
                if not isinstance(text, str) or not text.strip():
                    self._skip(source, "empty document")
                    continue
                yield Document(content_id(text), source, {"row": row - 1}, text=text)


def _decode_text(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise _Skip("binary file (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Skip(f"not UTF-8 text (byte {err.start})") from None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


# Modules whose import has side effects (opens a browser, prints, starts a GUI) or that are
# only tests and demos.
_UNSAFE_MODULES = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
     "ensurepip", "pydoc_data", "__phello__", "xxsubtype", "msvcrt", "winreg", "winsound"}
)


class PythonDocsCorpus:
    """Real English prose present on every Python install: the pydoc topics of the language
    reference, and each standard-library module's docstring with its public classes' docstrings.
    """

    name = "python_docs"

    def __init__(self, topics: bool = True, docstrings: bool = True, limit: int | None = None) -> None:
        self.topics = topics
        self.docstrings = docstrings
        self.limit = limit
        self.skipped: list[tuple[str, str]] = []

    def describe(self) -> str:
        """Where the documents come from, for messages."""
        return "the built-in python_docs corpus"

    def __iter__(self) -> Iterator[Document]:
        produced = 0
        for doc in self._all():
            if self.limit is not None and produced >= self.limit:
                return
            produced += 1
            yield doc

    def _all(self) -> Iterator[Document]:
        if self.topics:
            from pydoc_data.topics import topics

            for key in sorted(topics):
                text = topics[key].strip()
                if text:
                    yield Document(content_id(text), f"pydoc:{key}", {"title": key}, text=text)
        if self.docstrings:
            for name in sorted(sys.stdlib_module_names):
                if name.startswith("_") or name in _UNSAFE_MODULES:
                    continue
                text = _module_text(name)
                if text and len(text) >= 200:
                    yield Document(content_id(text), f"module:{name}", {"title": name}, text=text)


def _module_text(name: str) -> str | None:
    """A module's docstring followed by those of its public classes, or None if it won't import."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # platform-specific or optional modules are simply absent
        return None
    parts = [f"Module {name}\n\n{inspect.cleandoc(module.__doc__ or '')}"]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not inspect.isclass(obj) or obj.__module__ != name:
            continue
        doc = obj.__doc__
        if doc and len(doc) > 40:
            parts.append(f"class {name}.{attr}\n\n{inspect.cleandoc(doc)}")
    return "\n\n".join(parts).strip()
