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
    """Appends records as single lines, each flushed and fsynced; the file is created on first write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _repair(self.path)
        self.ids = {r["id"] for r in read_jsonl(self.path)}
        self._file = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (skipped when its id is already in the file)."""
        if record["id"] in self.ids:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.ids.add(record["id"])

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
