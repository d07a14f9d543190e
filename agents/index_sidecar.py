"""A compact SQLite sidecar of a Chroma index: chunk positions and documents by length.

Seed chunks and back-translation documents are drawn at random from the whole index. Chroma answers
"the chunk at position p" only with `get(offset=p)`, an SQL OFFSET scan that grows linearly with
the index (20 ms at 0, 156 ms at 300k chunks), and "documents of lo..hi tokens" only by fetching every
matching registry id. The sidecar turns both into B-tree lookups, O(log n), whatever the index size:

- `chunks(position INTEGER PRIMARY KEY, id UNIQUE, doc_id, n_tokens)`: the rowid *is* the position
  (0-based position p = rowid p+1). Rows are only ever appended, with `INSERT OR IGNORE`, so positions
  are dense, stable, and follow Chroma's own write order (the order `get(offset=)` walks). Indexed by
  `doc_id` too, so a document's chunks are fetched by id (Chroma's `where doc_id in …` grows with the
  index: 19 ms for 4 documents at 100k chunks, against 2 ms by id).
- `docs(id PRIMARY KEY, n_tokens, bucket, rank, UNIQUE(bucket, rank))` and `buckets(bucket, n)`:
  each complete document sits in a length bucket (`BUCKETS_PER_OCTAVE` buckets per doubling of its
  registry token count) at a dense rank inside it. A uniform draw among the documents of lo..hi tokens
  is then: a random integer over the candidate buckets' total, mapped to (bucket, rank) through the
  few bucket counts, one indexed lookup, rejected if it falls outside lo..hi at an edge bucket.

Why SQLite and not more Chroma metadata: a position needs a dense unique counter and a rank-in-bucket a
dense counter per bucket, which Chroma cannot allocate atomically; Chroma's `where` on a metadata value
is not guaranteed to be an index lookup; and adding fields to the records of an existing index means
rewriting all of them. One small file per collection (about 100 bytes a chunk) is written by the
indexer in the same steps as Chroma and read by every synthesis process, on the same disk as an
embedded store or on shared storage next to a Chroma server.

Kept in sync and resumable like the index: the indexer writes a chunk to Chroma first and then here,
registers a document in Chroma first and then here, and on a rerun re-enters (idempotently) every
chunk and registered document it skips. So the sidecar never names a chunk Chroma lacks, and after a
kill at any moment the next run fills whatever the kill left out. An index built before the sidecar
existed gets it built once (`build`), batch by batch from Chroma, into a temporary file that replaces
the final one only when complete.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from agents.errors import InputError

BUCKETS_PER_OCTAVE = 16  # length buckets per doubling of tokens (each ~4.4% wide)
SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (position INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT,
                                   n_tokens INTEGER);
CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, n_tokens INTEGER NOT NULL, bucket INTEGER NOT NULL,
                                 rank INTEGER NOT NULL, UNIQUE (bucket, rank));
CREATE TABLE IF NOT EXISTS buckets (bucket INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id);
"""


def bucket_of(n_tokens: int) -> int:
    """The length bucket of a token count: `BUCKETS_PER_OCTAVE` buckets per doubling, 0 for 0 or 1 token."""
    return int(math.floor(BUCKETS_PER_OCTAVE * math.log2(n_tokens))) if n_tokens > 1 else 0


class IndexSidecar:
    """The sidecar file of one collection. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # --- opening and building -----------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (file and tables created on first use)."""
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = _connect(self.path)
            except (OSError, sqlite3.Error) as err:
                raise InputError(
                    f"cannot open the index sidecar {self.path} ({err}): set store.sidecar to a writable folder "
                    "(one that every synthesis process can read)"
                ) from err
        return self._db

    def meta(self, key: str) -> str | None:
        """A value of the meta table (None if unset)."""
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def is_for(self, collection_id: str) -> bool:
        """Whether this file is a complete sidecar of the Chroma collection with that id."""
        if not self.path.exists():
            return False
        return self.meta("complete") == "1" and self.meta("collection_id") == collection_id

    def build(
        self,
        collection_id: str,
        chunk_pages: Iterable[Sequence[tuple[str, str, int]]],
        doc_pages: Iterable[Sequence[tuple[str, int]]],
    ) -> None:
        """(Re)build from what the collection holds: pages of chunks `(id, doc_id, n_tokens)` in the
        collection's order, then pages of registered documents `(id, n_tokens)`. Written to a temporary
        file that atomically replaces this one when complete; a second process that finds a complete
        sidecar under the build lock does nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _FileLock(self.path.with_name(self.path.name + ".lock")):
            self.close()  # what another process built while we waited is a new file
            if self.is_for(collection_id):
                return
            tmp = self.path.with_name(f"{self.path.name}.building-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            building = IndexSidecar(tmp)
            try:
                for page in chunk_pages:
                    building.add_chunks(page)
                for page in doc_pages:
                    building.add_docs(page)
                building.set_meta(collection_id=collection_id, complete="1", version=SCHEMA_VERSION)
            finally:
                building.close()
            self.close()
            os.replace(tmp, self.path)

    def start(self, collection_id: str) -> None:
        """Mark a new, empty sidecar as the complete one of a collection that is empty too."""
        self.set_meta(collection_id=collection_id, complete="1", version=SCHEMA_VERSION)

    def set_meta(self, **values: str) -> None:
        """Set meta values."""
        with self._lock, self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))

    def close(self) -> None:
        """Close the connection (reopened on next use)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # --- writing (the indexer) -----------------------------------------------------------------------

    def add_chunks(self, chunks: Sequence[tuple[str, str, int]]) -> None:
        """Append chunks `(id, doc_id, n_tokens)` that Chroma holds, in its order; known ids are skipped."""
        if not chunks:
            return
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT OR IGNORE INTO chunks (id, doc_id, n_tokens) VALUES (?, ?, ?)",
                [(c, d, int(n)) for c, d, n in chunks],
            )

    def add_docs(self, docs: Sequence[tuple[str, int]]) -> None:
        """Enter complete documents `(id, n_tokens)` (registry token counts); known ids are skipped."""
        if not docs:
            return
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for doc_id, n_tokens in docs:
                if self.db.execute("SELECT 1 FROM docs WHERE id = ?", (doc_id,)).fetchone():
                    continue
                bucket = bucket_of(int(n_tokens))
                row = self.db.execute("SELECT n FROM buckets WHERE bucket = ?", (bucket,)).fetchone()
                rank = row[0] if row else 0
                self.db.execute("INSERT INTO docs (id, n_tokens, bucket, rank) VALUES (?, ?, ?, ?)",
                                (doc_id, int(n_tokens), bucket, rank))
                self.db.execute("INSERT OR REPLACE INTO buckets (bucket, n) VALUES (?, ?)", (bucket, rank + 1))

    # --- reading (synthesis) -------------------------------------------------------------------------

    def chunk_count(self) -> int:
        """Chunks listed (the largest position + 1): one B-tree lookup."""
        with self._lock:
            return int(self.db.execute("SELECT coalesce(max(position), 0) FROM chunks").fetchone()[0])

    def chunk_id(self, position: int) -> str:
        """Id of the chunk at a 0-based position; IndexError outside 0..chunk_count()-1."""
        with self._lock:
            row = self.db.execute("SELECT id FROM chunks WHERE position = ?", (int(position) + 1,)).fetchone()
        if row is None:
            raise IndexError(f"no chunk at position {position} of the index sidecar {self.path}")
        return row[0]

    def chunk_ids_of(self, doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """The listed chunk ids of each of these documents (those with none are left out)."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for i in range(0, len(doc_ids), 500):
                part = list(doc_ids[i : i + 500])
                marks = ",".join("?" * len(part))
                for doc_id, cid in self.db.execute(
                    f"SELECT doc_id, id FROM chunks WHERE doc_id IN ({marks}) ORDER BY position", part
                ):
                    out.setdefault(doc_id, []).append(cid)
        return out

    def doc_count(self) -> int:
        """Documents listed."""
        with self._lock:
            return int(self.db.execute("SELECT coalesce(sum(n), 0) FROM buckets").fetchone()[0])

    def mean_doc_tokens(self) -> float:
        """Mean token count of the listed documents (0.0 for none): one aggregate in SQLite."""
        with self._lock:
            return float(self.db.execute("SELECT coalesce(avg(n_tokens), 0.0) FROM docs").fetchone()[0])

    def pick_documents(self, lo_tokens: int, hi_tokens: int | None, rng: random.Random, n: int) -> list[str]:
        """Up to `n` distinct document ids drawn uniformly at random (by `rng`) among those whose
        registry token count is in `lo_tokens..hi_tokens` (None: no upper bound), in draw order.

        Each draw is one indexed lookup; the result depends only on `rng`'s state and the sidecar's
        contents. When the candidate buckets hold few documents, or draws keep missing (a range much
        narrower than a bucket), the candidates are listed and sampled instead."""
        if n <= 0:
            return []
        hi = hi_tokens if hi_tokens is not None else 2**62
        if hi < lo_tokens:
            return []
        with self._lock:
            rows = self.db.execute(
                "SELECT bucket, n FROM buckets WHERE bucket BETWEEN ? AND ? ORDER BY bucket",
                (bucket_of(max(lo_tokens, 0)), bucket_of(hi)),
            ).fetchall()
        total = sum(c for _, c in rows)
        if total == 0:
            return []
        if total > max(64, 8 * n):
            starts = [0]
            for _, c in rows:
                starts.append(starts[-1] + c)
            picked: list[str] = []
            seen: set[str] = set()
            for _ in range(64 * n):
                k = rng.randrange(total)
                i = bisect.bisect_right(starts, k) - 1
                with self._lock:
                    doc_id, tokens = self.db.execute(
                        "SELECT id, n_tokens FROM docs WHERE bucket = ? AND rank = ?", (rows[i][0], k - starts[i])
                    ).fetchone()
                if lo_tokens <= tokens <= hi and doc_id not in seen:
                    seen.add(doc_id)
                    picked.append(doc_id)
                    if len(picked) == n:
                        return picked
        with self._lock:
            ids = [
                d for (d,) in self.db.execute(
                    "SELECT id FROM docs WHERE bucket BETWEEN ? AND ? AND n_tokens BETWEEN ? AND ? "
                    "ORDER BY bucket, rank", (rows[0][0], rows[-1][0], lo_tokens, hi),
                )
            ]
        return rng.sample(ids, min(n, len(ids)))

    def chunks(self) -> list[tuple[str, str, int]]:
        """Every listed chunk `(id, doc_id, n_tokens)` in position order (for tests and checks)."""
        with self._lock:
            return [tuple(r) for r in self.db.execute("SELECT id, doc_id, n_tokens FROM chunks ORDER BY position")]

    def docs(self) -> list[tuple[str, int, int, int]]:
        """Every listed document `(id, n_tokens, bucket, rank)` in bucket and rank order."""
        with self._lock:
            rows = self.db.execute("SELECT id, n_tokens, bucket, rank FROM docs ORDER BY bucket, rank")
            return [tuple(r) for r in rows]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=60.0)
    db.executescript(_SCHEMA)
    return db


class _FileLock:
    """An exclusive `flock` on a small file: one process builds a sidecar, the others wait and reuse it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
        import fcntl

        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
