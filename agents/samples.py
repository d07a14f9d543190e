"""Sample ids and the JSONL files a synthesis run writes: one line per finished sample, appended
once by a single writer, flushed to disk before the next; rejected samples go to their own file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sample_id(**fields: Any) -> str:
    """Hash of the seed and generation settings that decide a sample (24 hex digits)."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file (a torn last line is ignored)."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records


def _repair(path: Path) -> None:
    """Cut a torn last line (a write interrupted by a kill) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class JsonlWriter:
    """Appends records as single lines, each flushed and fsynced; the file is created on first write.

    Beside it, `<name>.index` keeps a few fields of each record (`keep`, always the id) and the byte offset
    where the record ends, so reopening a run costs O(records) small lines, not a parse of the samples (GBs
    at 1M-token samples). An index behind its file (a kill between the two appends) is caught up from the
    file's tail; one ahead of it (a torn last line cut) is trimmed; a missing one is built once.
    """

    def __init__(self, path: str | Path, keep: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.index_path = self.path.with_name(self.path.name + ".index")
        self.keep = ("id", *[k for k in keep if k != "id"])
        _repair(self.path)
        latest = {r["id"]: r for r in self._load_index()}  # a superseding line (see `write`) wins
        self.records = list(latest.values())
        self.ids = set(latest)
        self._file = None
        self._index = None

    def _kept(self, record: dict[str, Any], end: int) -> dict[str, Any]:
        return {**{k: record.get(k) for k in self.keep}, "end": end}

    def _load_index(self) -> list[dict[str, Any]]:
        size = self.path.stat().st_size if self.path.exists() else 0
        entries: list[dict[str, Any]] = []
        if self.index_path.exists():
            with open(self.index_path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        entries.append(json.loads(line))
        stale = bool(entries) and (entries[-1]["end"] > size or any(k not in entries[0] for k in self.keep))
        if stale:
            entries = [e for e in entries if e["end"] <= size] if entries[-1]["end"] > size else []
        end = entries[-1]["end"] if entries else 0
        tail = []
        if size > end:  # records the index has not seen: read them from their offset
            with open(self.path, "rb") as f:
                f.seek(end)
                for raw in f:
                    end += len(raw)
                    tail.append(self._kept(json.loads(raw), end))
        if stale or tail:
            entries += tail
            tmp = self.index_path.with_name(self.index_path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
            os.replace(tmp, self.index_path)
        return entries

    def write(self, record: dict[str, Any], supersede: bool = False) -> None:
        """Append one record, then its index line. A record whose id is already in the file is skipped, or with
        `supersede` appended as the id's newest record (which reopening keeps in `records`)."""
        if record["id"] in self.ids and not supersede:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            self._index = open(self.index_path, "a", encoding="utf-8")
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        kept = self._kept(record, self._file.tell())
        self._index.write(json.dumps(kept, ensure_ascii=False) + "\n")
        self._index.flush()
        if record["id"] in self.ids:
            self.records = [r for r in self.records if r["id"] != record["id"]]
        self.records.append(kept)
        self.ids.add(record["id"])

    def close(self) -> None:
        """Close the files."""
        for f in (self._file, self._index):
            if f is not None:
                f.close()
        self._file = self._index = None
