"""Prepare a training mixture once: read, render with the chat template, tokenize, mask and pack it into
memory-mapped files on disk, keyed by a fingerprint of everything that shapes the rows. Every rank of every
later run then maps the files and reads only the rows its sampler asks for.

Layout of `<prepared_dir>/<fingerprint>/` (numpy files read with `np.memmap`):

- `input_ids.u32` `[rows, seq_len]` uint32 token ids, padded with the tokenizer's pad id;
- `flags.u8` `[rows, seq_len]` bit 0: the token is labelled (loss policy), bit 1: it belongs to an assistant
  turn (`response`);
- `doc_lens.u32` `[documents]` each packed sample's length, row after row, and `row_docs.i64` `[rows + 1]`
  where each row's samples start in it: the document ids of a row are rebuilt from them;
- `meta.json` (written last: a folder without it is not a preparation) with the settings and `PackStats`.

5 bytes per row position, against 24 for the three int64 arrays held in memory before. The build writes a
`<fingerprint>.tmp-<pid>` folder and renames it into place; one process builds while the others wait on
`<fingerprint>.lock` and then reuse it. Each build appends a line to `<prepared_dir>/builds.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_modules.data import (ROWS_PER_TASK, PackStats, Part, Source, best_fit, decode_row, fill_rows,
                                    missing_data_file, plan_parts, read_part, sample_flags, tokenize_messages)
from lightning_modules.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout, the mixing or the packing changes: older preparations are not reused


# --- what a preparation is keyed by ---------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides token ids: the tokenizer's full definition (vocabulary, merges, normalizer,
    specials), its chat template and pad id."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:  # a slow tokenizer: its vocabulary and specials
        definition = json.dumps(sorted(tokenizer.get_vocab().items())) + repr(tokenizer.all_special_tokens)
    h = hashlib.sha256()
    for part in (type(tokenizer).__name__, definition, str(tokenizer.chat_template), str(tokenizer.pad_token_id)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def fingerprint(tokenizer, sources: list[Source], seq_len: int, seed: int, mark_responses: bool) -> str:
    """The key of a preparation: sources (absolute path, size and modification time, weight, loss policy),
    the tokenizer and chat template, `seq_len`, the seed, whether responses are marked, and `FORMAT`."""
    described = []
    for s in sources:
        p = Path(s.path)
        stat = p.stat()
        described.append({"path": str(p.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                          "weight": s.weight, "loss": s.loss, "format": s.format})
    key = {"format": FORMAT, "sources": described, "tokenizer": tokenizer_fingerprint(tokenizer),
           "seq_len": seq_len, "seed": seed, "mark_responses": mark_responses}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


# --- reading the sources in parts -------------------------------------------------------------------------


def check_source(i: int, source: Source) -> None:
    """Refuse a source entry the trainer cannot read, naming its key."""
    if source.loss not in ("all", "responses"):
        raise ConfigError(f"data.sources[{i}].loss must be 'all' or 'responses', not {source.loss!r}")
    if source.format != "messages":
        raise ConfigError(f"data.sources[{i}].format must be 'messages', not {source.format!r} (generated "
                          f"tasks reach training as files: see conf/data/passkey.yaml)")
    if not source.path:
        raise ConfigError(f"data.sources[{i}] (format messages) needs a path")
    if not Path(source.path).is_file():
        raise missing_data_file(source.path)


# --- the build -----------------------------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(tokenizer, mark_responses: bool) -> None:
    _worker.update(tokenizer=tokenizer, mark_responses=mark_responses)


def _tokenize_part(path: str, loss: str, part: Part, out: str) -> np.ndarray:
    """Tokenize one task's rows into `<out>.ids.u32` and `<out>.flags.u8`; returns their lengths."""
    tokenizer, mark = _worker["tokenizer"], _worker["mark_responses"]
    lengths, ids_out, flags_out = [], open(out + ".ids.u32", "wb"), open(out + ".flags.u8", "wb")
    with ids_out, flags_out:
        for messages in read_part(path, part):
            ids, labels, response = tokenize_messages(tokenizer, messages, loss, mark)
            if len(ids) and int(ids.max()) >= 2 ** 32:
                raise ConfigError(f"{path}: token id {int(ids.max())} does not fit uint32")
            ids_out.write(ids.astype(np.uint32).tobytes())
            flags_out.write(sample_flags(labels, response).tobytes())
            lengths.append(len(ids))
    return np.asarray(lengths, dtype=np.int64)


def mixture(counts: list[int], weights: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The samples of one data epoch as (source, row) arrays: a source of weight w gives floor(w) copies of
    every row plus a seeded choice of round(frac(w) x rows); the whole list is then shuffled with the seed."""
    rng = random.Random(seed)
    mixed: list[tuple[int, int]] = []
    for i, (n, weight) in enumerate(zip(counts, weights)):
        whole, part = divmod(weight, 1.0)
        chosen = list(range(n)) * int(whole) + rng.sample(range(n), int(round(part * n)))
        mixed += [(i, j) for j in chosen]
    rng.shuffle(mixed)
    arr = np.asarray(mixed, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


class Tokenized:
    """Every source's tokenized rows, read by memory map from the task files."""

    def __init__(self, folder: Path, parts: list[Part], lengths: list[np.ndarray], counts: list[int]) -> None:
        self.lengths = [np.zeros(n, dtype=np.int64) for n in counts]  # [rows] per source
        self.where: list[np.ndarray] = [np.zeros((n, 2), dtype=np.int64) for n in counts]  # (task, token offset)
        self.files: list[tuple[np.ndarray, np.ndarray]] = []
        for k, (part, lens) in enumerate(zip(parts, lengths)):
            rows = slice(part.start, part.start + part.count)
            self.lengths[part.source][rows] = lens
            self.where[part.source][rows, 0] = k
            self.where[part.source][rows, 1] = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else []
            stem = folder / f"task{k}"
            total = int(lens.sum())
            ids = np.memmap(f"{stem}.ids.u32", np.uint32, "r", shape=(total,)) if total else np.zeros(0, np.uint32)
            flags = np.memmap(f"{stem}.flags.u8", np.uint8, "r", shape=(total,)) if total else np.zeros(0, np.uint8)
            self.files.append((ids, flags))

    def sample(self, source: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """One row's token ids and flags."""
        k, at = self.where[source][row]
        n = self.lengths[source][row]
        ids, flags = self.files[k]
        return ids[at:at + n], flags[at:at + n]


def _write_rows(folder: str, rows: tuple[int, int], shape: tuple[int, int], n_docs: int) -> None:
    """Worker: fill rows `rows[0] .. rows[1] - 1` of the output files from the tokenized tasks."""
    state = _worker["build"]
    plan, sources, source_rows, tokenized = state["plan"], state["sources"], state["rows"], state["tokenized"]
    out = Path(folder)
    input_ids = np.memmap(out / "input_ids.u32", np.uint32, "r+", shape=shape)
    flags = np.memmap(out / "flags.u8", np.uint8, "r+", shape=shape)
    doc_lens = np.memmap(out / "doc_lens.u32", np.uint32, "r+", shape=(n_docs,))
    row_docs = np.memmap(out / "row_docs.i64", np.int64, "r", shape=(shape[0] + 1,))
    fill_rows(plan[rows[0]:rows[1]], lambda i: tokenized.sample(sources[i], source_rows[i]), input_ids, flags,
              doc_lens, row_docs, rows[0])
    for m in (input_ids, flags, doc_lens):
        m.flush()


def build(folder: Path, tokenizer, sources: list[Source], seq_len: int, seed: int, mark_responses: bool,
          num_proc: int = 1, rows_per_task: int = ROWS_PER_TASK) -> PackStats:
    """Tokenize every source once (in `num_proc` processes), mix, pack best-fit and write the rows."""
    counts, parts = [], []
    for i, s in enumerate(sources):
        n, p = plan_parts(i, s.path, rows_per_task)
        counts.append(n)
        parts += p
    tasks = folder / "tokenized"
    tasks.mkdir(parents=True)
    _init_worker(tokenizer, mark_responses)
    pool = (ProcessPoolExecutor(num_proc, mp_context=get_context("fork"), initializer=_init_worker,
                                initargs=(tokenizer, mark_responses)) if num_proc > 1 else None)
    try:
        args = [(sources[p.source].path, sources[p.source].loss, p, str(tasks / f"task{k}"))
                for k, p in enumerate(parts)]
        lengths = list(pool.map(_tokenize_part, *zip(*args))) if pool and args else [_tokenize_part(*a) for a in args]
        tokenized = Tokenized(tasks, parts, lengths, counts)
        src, row = mixture(counts, [s.weight for s in sources], seed)
        sizes = np.zeros(len(src), dtype=np.int64)  # [samples] in mixed order
        for i in range(len(sources)):
            sizes[src == i] = tokenized.lengths[i][row[src == i]]
        plan = best_fit(sizes.tolist(), seq_len)
        stats = PackStats(seq_len=seq_len, samples=len(src), too_long=int((sizes > seq_len).sum()), rows=len(plan),
                          tokens=int(sizes[sizes <= seq_len].sum()))  # every sample that fits a row is packed
        for i, s in enumerate(sources):
            stats.per_source[s.path] = stats.per_source.get(s.path, 0) + int((src == i).sum())
        if not plan:
            raise ConfigError(f"no sample fits seq_len={seq_len} ({stats.too_long} were longer); check "
                              f"data.sources or pick a longer stage")
        n_docs = sum(len(r) for r in plan)
        shape = (len(plan), seq_len)
        pad = tokenizer.pad_token_id
        np.memmap(folder / "input_ids.u32", np.uint32, "w+", shape=shape)[:] = pad  # padding everywhere first
        np.memmap(folder / "flags.u8", np.uint8, "w+", shape=shape).flush()
        np.memmap(folder / "doc_lens.u32", np.uint32, "w+", shape=(n_docs,)).flush()
        row_docs = np.memmap(folder / "row_docs.i64", np.int64, "w+", shape=(len(plan) + 1,))
        row_docs[:] = np.concatenate([[0], np.cumsum([len(r) for r in plan])])
        row_docs.flush()
        _worker["build"] = {"plan": plan, "sources": src, "rows": row, "tokenized": tokenized}
        step = -(-len(plan) // (num_proc * 4))
        ranges = [(a, min(a + step, len(plan))) for a in range(0, len(plan), step)]
        if num_proc > 1:  # a fresh pool: its forked workers see the plan
            pool.shutdown()
            pool = ProcessPoolExecutor(num_proc, mp_context=get_context("fork"))
            list(pool.map(_write_rows, *zip(*[(str(folder), r, shape, n_docs) for r in ranges])))
        else:
            for r in ranges:
                _write_rows(str(folder), r, shape, n_docs)
    finally:
        _worker.pop("build", None)
        if pool:
            pool.shutdown()
    shutil.rmtree(tasks)
    return stats


# --- the entry: prepare once, reuse after ------------------------------------------------------------------


class _Lock:
    """An exclusive `flock` on `<path>`: one process builds, the others block until it is done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Lock:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is preparing %s; waiting for it", self.path.with_suffix(""))
            print(f"waiting for another process to prepare {self.path.with_suffix('')}", flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the lock


def prepare(tokenizer, sources: list[dict] | list[Source], seq_len: int, seed: int, mark_responses: bool,
            prepared_dir: str, num_proc: int = 1, rows_per_task: int = ROWS_PER_TASK) -> Path:
    """The folder of this mixture's prepared rows: reused when a preparation with the same fingerprint is
    complete, else built (by one process; the others wait). Bad sources raise `ConfigError`."""
    srcs = [s if isinstance(s, Source) else Source(**s) for s in sources]
    for i, s in enumerate(srcs):
        check_source(i, s)
    key = fingerprint(tokenizer, srcs, seq_len, seed, mark_responses)
    root = Path(prepared_dir)
    final = root / key
    if (final / "meta.json").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make data.prepared_dir {root} ({e.strerror}); set it to a writable folder") from None
    with _Lock(root / f"{key}.lock"):
        if (final / "meta.json").is_file():  # another process built it while this one waited
            return final
        for stale in root.glob(f"{key}.tmp-*"):  # a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete (no meta.json): never reused
            shutil.rmtree(final)
        tmp = root / f"{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        t0 = time.perf_counter()
        try:
            stats = build(tmp, tokenizer, srcs, seq_len, seed, mark_responses, num_proc, rows_per_task)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - t0
        meta = {"format": FORMAT, "fingerprint": key, "seq_len": seq_len, "seed": seed,
                "pad_id": tokenizer.pad_token_id, "mark_responses": mark_responses,
                "sources": [asdict(s) for s in srcs], "stats": asdict(stats), "seconds": round(seconds, 3),
                "num_proc": num_proc}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, final)
        with open(root / "builds.jsonl", "a") as f:
            f.write(json.dumps({"fingerprint": key, "samples": stats.samples, "tokens": stats.tokens,
                                "rows": stats.rows, "seconds": round(seconds, 3), "num_proc": num_proc,
                                "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        log.info("prepared %d samples into %d rows of %d tokens (fill %.1f%%) in %.1f s: %s", stats.samples,
                 stats.rows, seq_len, 100 * stats.fill, seconds, final)
    return final


def load_stats(folder: Path) -> PackStats:
    """The `PackStats` a preparation recorded."""
    return PackStats(**json.loads((Path(folder) / "meta.json").read_text())["stats"])


class PreparedRows(Dataset):
    """A preparation's rows as `{input_ids, labels, doc_ids}` `[seq_len]` int64 tensors and `response` (bool),
    read by memory map (opened lazily, so each DataLoader worker maps the files itself)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.seq_len, self.rows = meta["seq_len"], meta["stats"]["rows"]
        self._maps: tuple[np.memmap, ...] | None = None

    def _open(self) -> tuple[np.memmap, ...]:
        if self._maps is None:
            shape, f = (self.rows, self.seq_len), self.folder
            row_docs = np.memmap(f / "row_docs.i64", np.int64, "r", shape=(self.rows + 1,))
            self._maps = (np.memmap(f / "input_ids.u32", np.uint32, "r", shape=shape),
                          np.memmap(f / "flags.u8", np.uint8, "r", shape=shape), row_docs,
                          np.memmap(f / "doc_lens.u32", np.uint32, "r", shape=(int(row_docs[-1]),)))
        return self._maps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}  # a pickled memmap would be a full copy: workers map their own

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, r: int) -> dict[str, torch.Tensor]:
        ids, flags, row_docs, doc_lens = self._open()
        row = decode_row(ids[r], np.asarray(flags[r]), doc_lens[row_docs[r]:row_docs[r + 1]].astype(np.int64))
        return {k: torch.from_numpy(v) for k, v in row.items()}  # copies: the mapped pages stay clean and shared
