"""On-disk cache of finished LLM calls, so a killed synthesis run resumes at request granularity.

One SQLite file; each finished call is committed as soon as it returns, keyed by a sha256 of the
model, the messages and every generation parameter. SQLite's write-ahead log makes a write all-or-nothing,
so a SIGKILL at any moment leaves either the whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def request_key(payload: dict[str, Any]) -> str:
    """sha256 of a request's canonical JSON (sorted keys): equal requests, equal keys."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LLMCache:
    """A key → JSON value table in one SQLite file, created on first write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a killed process (what resuming needs) without an fsync per call
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._conn = conn
        return self._conn

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None (nothing is created when the file does not exist yet)."""
        if self._conn is None and not self.path.exists():
            return None
        with self._lock:
            row = self._db().execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store one finished call (committed before returning)."""
        blob = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db().execute("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", (key, blob))

    def __len__(self) -> int:
        if self._conn is None and not self.path.exists():
            return 0
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        """Close the database file."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
