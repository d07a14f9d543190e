"""Corpus readers: turn files or the built-in Python documentation into `Document` records.

A record is `{id, text, source, meta}` (DESIGN.md); `id` is a content hash of the text, so the
same text read twice, from anywhere, is the same document. Readers are lazy iterators: nothing is
read before iteration, and a file larger than `stream_above_bytes` is never held in memory — its
record carries the path and its text is read in blocks by `Document.blocks()`.
Files that cannot be read as UTF-8 text are skipped and listed in `corpus.skipped`.

A record's title (`meta["title"]`) is the one line a sample shows above the document ("Document 3: <title>"), so it
comes only from the data itself (a title field or column, a Markdown heading, a pydoc topic or module name) and never
from where the document is stored: a document without one has no `"title"` key, and its header is "Document 3".
Anything path-like is refused as a title (`title_or_empty`). A URL is kept in `meta["url"]`, never in a title.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import inspect
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import InputError

log = logging.getLogger(__name__)

READ_BYTES = 1 << 20  # bytes per read when hashing or streaming a file
TITLE_SCAN_CHARS = 1 << 16  # a Markdown title is looked for in the first this many characters
MARKDOWN_SUFFIXES = (".md", ".markdown")

# A "title" that is a location: anything starting like an absolute, home or relative path (/x, ~/x, ./x, ../x, C:\x),
# a URL (scheme://, no spaces), or a name without spaces ending in a file extension, optionally with a row or line
# number (000_00000.parquet#39, part-1.jsonl:7).
_PATH_LIKE = re.compile(
    r"(?:[/\\]|~[/\\]|\.{1,2}[/\\]|[a-zA-Z]:[/\\]).*|[a-zA-Z][a-zA-Z0-9+.-]*://\S*"
    r"|\S*\.(?:txt|md|markdown|jsonl?|parquet|csv|tsv|html?|xml|pdf|gz|zst|bz2|xz|arrow)(?:[#:]\d+)?",
    re.IGNORECASE,
)
_FENCE = re.compile(r" {0,3}(?:`{3,}|~{3,})")
_ATX_H1 = re.compile(r" {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*")


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


def title_or_empty(value: Any) -> str:
    """`value` as a title: a string with its whitespace collapsed to single spaces, or "" when it is not a non-empty
    string or looks like a file path, file name or URL (`_PATH_LIKE`): such a "title" would put a storage location
    into the training text."""
    if not isinstance(value, str):
        return ""
    title = " ".join(value.split())
    if not title or _PATH_LIKE.fullmatch(title):
        return ""
    return title


def markdown_title(text: str) -> str:
    """The title of a Markdown text: `title:` of a YAML front matter block at its very start, else its first
    level-1 ATX heading (`# Title`, outside fenced code) in the first `TITLE_SCAN_CHARS` characters; "" if none."""
    lines = text[:TITLE_SCAN_CHARS].splitlines()
    start = 0
    if lines and lines[0].strip() == "---":
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() in ("---", "..."):
                start = i + 1
                break
            key, colon, value = line.partition(":")
            if colon and key.strip().lower() == "title":
                if title := title_or_empty(value.strip().strip("'\"")):
                    return title
    fenced = False
    for line in lines[start:]:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := _ATX_H1.fullmatch(line)):
            return title_or_empty(heading.group(1))
    return ""


class _Skip(Exception):
    """Raised inside a reader for an input that is skipped; the message is the reason."""


class FileCorpus:
    """Documents from a file or a folder (searched recursively, hidden entries ignored).

    `.txt`/`.md` files are one document each; `.jsonl` files one document per line (the string in
    `text_field`); `.parquet` files one document per row (column `text_field`).

    Titles (`meta["title"]`, shown above the document in a sample) come from the data, never from a file's path or
    name: a `.jsonl` line's string in `title_field`, a `.parquet` row's value in column `title_field` (when the file
    has that column), a Markdown file's front-matter `title:` or first `# Heading`. A `.txt` file has no title: its
    name is a storage detail (often `part-00042.txt`), and its first line is too often not a title to guess. Any other
    extension listed in `extensions` is read as plain text, like `.txt`. `url_field` (a `.jsonl` field or `.parquet`
    column) is kept in `meta["url"]` for provenance, never in a title or the text. Either field set to None is not
    read. A record without a title has no `"title"` key: its sample header is "Document 3".
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        text_field: str = "text",
        extensions: Sequence[str] = (".txt", ".md", ".jsonl", ".parquet"),
        stream_above_bytes: int = 64 << 20,
        title_field: str | None = "title",
        url_field: str | None = "url",
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name or self.path.stem or "corpus"
        self.text_field = text_field
        for key, value in (("title_field", title_field), ("url_field", url_field)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InputError(f"corpus.{key} is {value!r}: set it to a field/column name, or null to read none")
            if value == text_field:
                raise InputError(
                    f"corpus.{key} is {value!r}, the same field as corpus.text_field: set it to the field/column "
                    "holding each record's " + ("title" if key == "title_field" else "URL") + ", or null"
                )
        if title_field is not None and title_field == url_field:
            raise InputError(
                f"corpus.title_field and corpus.url_field are both {title_field!r}: a URL is never a title; set "
                "title_field to the field/column holding titles, or null"
            )
        self.title_field = title_field
        self.url_field = url_field
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
            yield Document(content_id(text), str(file), _titled({}, self._text_title(file, text)), text=text)

    def _text_title(self, file: Path, head: str) -> str:
        """The title of a whole-file document from the start of its text: Markdown only (see the class docstring)."""
        return markdown_title(head) if file.suffix.lower() in MARKDOWN_SUFFIXES else ""

    def _streamed_text_file(self, file: Path) -> Document:
        """Hash and validate a big file in one streaming pass; its text stays on disk."""
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        blank = True
        offset = 0
        head = ""  # the first TITLE_SCAN_CHARS characters, for the title
        with open(file, "rb") as f:
            while raw := f.read(READ_BYTES):
                if offset == 0 and b"\x00" in raw[:8192]:
                    raise _Skip("binary file (NUL bytes)")
                try:
                    piece = decoder.decode(raw)
                except UnicodeDecodeError as err:
                    raise _Skip(f"not UTF-8 text (byte {offset + err.start})") from None
                if len(head) < TITLE_SCAN_CHARS:
                    head += piece[: TITLE_SCAN_CHARS - len(head)]
                blank = blank and not piece.strip()
                digest.update(raw)
                offset += len(raw)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _Skip("not UTF-8 text (truncated character at the end)") from None
        if blank:
            raise _Skip("empty document")
        meta = _titled({"bytes": offset}, self._text_title(file, head))
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
                # other scalar fields ride along; "title" and "url" only from the configured fields
                reserved = {self.text_field, self.title_field, self.url_field, "title", "url"}
                meta = {k: v for k, v in record.items() if k not in reserved and _is_scalar(v)}
                meta = _titled(meta, self._field(record, self.title_field), self._field(record, self.url_field))
                yield Document(content_id(text), source, meta, text=text)

    @staticmethod
    def _field(record: dict[str, Any], key: str | None) -> Any:
        return record.get(key) if key is not None else None

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
        names = table.schema_arrow.names
        # title and URL columns are read when this file has them (a folder may mix files with and without)
        extra = [c for c in (self.title_field, self.url_field) if c is not None and c in names]
        row = 0
        for batch in table.iter_batches(batch_size=1024, columns=[self.text_field, *extra]):
            values = {name: batch.column(i).to_pylist() for i, name in enumerate([self.text_field, *extra])}
            for i, text in enumerate(values[self.text_field]):
                source = f"{file}#{row}"
                row += 1
                if not isinstance(text, str) or not text.strip():
                    self._skip(source, "empty document")
                    continue
                title = values[self.title_field][i] if self.title_field in extra else None
                url = values[self.url_field][i] if self.url_field in extra else None
                yield Document(content_id(text), source, _titled({"row": row - 1}, title, url), text=text)


def _decode_text(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise _Skip("binary file (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Skip(f"not UTF-8 text (byte {err.start})") from None


def _titled(meta: dict[str, Any], title: Any, url: Any = None) -> dict[str, Any]:
    """`meta` with `"title"` and `"url"` set when `title` is a usable title (`title_or_empty`) and `url` a non-empty
    string; absent otherwise (a missing title is no title, never a stand-in)."""
    if clean := title_or_empty(title):
        meta["title"] = clean
    if isinstance(url, str) and url.strip():
        meta["url"] = url.strip()
    return meta


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
    A topic's title is its pydoc key ("assert"), a module's its name ("argparse"); neither is a path.
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
