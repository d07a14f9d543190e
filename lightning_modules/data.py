"""Training data primitives: `messages` JSONL or parquet files only (synthesis samples, short instruction data,
the programmatic needle data that `evaluate.py ... export_training=` writes), tokenized with the chat template
and packed to the stage length. `lightning_modules.prepare` applies them once and writes the rows to disk;
`lightning_modules.datamodule` serves them.

- Loss policy per source: `all` (every token, the paper's choice for long samples) or `responses`
  (assistant turns only, for short instruction data).
- Mixture: a source's `weight` is how many times it is used per data epoch (0.5: a seeded half,
  2: twice). The mixed list is shuffled with the seed, then packed best-fit (longest first, each into
  the fullest row it fits) into rows of `seq_len` tokens; each sample is a document (`doc_ids`), so no
  token attends across samples.
  Samples longer than `seq_len` are dropped and counted.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_modules.context_parallel import IGNORE_INDEX
from lightning_modules.errors import ConfigError


@dataclass
class Source:
    """One entry of the data mixture."""

    format: str = "messages"  # JSONL / parquet rows with `messages`
    path: str | None = None
    weight: float = 1.0
    loss: str = "all"  # "all" or "responses"


@dataclass
class PackStats:
    """What packing made of the samples."""

    seq_len: int
    samples: int = 0
    too_long: int = 0
    rows: int = 0
    tokens: int = 0
    per_source: dict[str, int] = field(default_factory=dict)

    @property
    def fill(self) -> float:
        """Fraction of row positions holding real tokens."""
        return self.tokens / max(1, self.rows * self.seq_len)


ROWS_PER_TASK = 2048  # conversations per tokenizing task of a preparation


@dataclass
class Part:
    """One tokenizing task: rows `start .. start + count - 1` of source `source`."""

    source: int
    start: int
    count: int
    offset: int = 0  # JSONL: the byte where its first row's line starts; parquet: the row group
    line: int = 1  # JSONL: the line number of its first row


def missing_data_file(path: str) -> ConfigError:
    """The error for a data file that is not there, with the commands that make one."""
    return ConfigError(f"data file {path} does not exist; fix data.sources[].path or make it "
                       f"(python synthesize.py writes samples.jsonl; python evaluate.py task=passkey "
                       f"export_training={path} export.seq_len=<stage length> writes the passkey task)")


def read_messages(path: str) -> list[list[dict]]:
    """The `messages` of every row of a .jsonl or .parquet file, each checked (errors name the file and line)."""
    if not Path(path).is_file():
        raise missing_data_file(path)
    return [messages for part in plan_parts(0, path)[1] for messages in read_part(path, part)]


def plan_parts(i: int, path: str, rows_per_task: int = ROWS_PER_TASK) -> tuple[int, list[Part]]:
    """How many rows a source has, and its tokenizing tasks (found without parsing a JSONL line)."""
    parts: list[Part] = []
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        if "messages" not in meta.schema_arrow.names:
            raise ConfigError(f"{path} has no 'messages' column (columns: {meta.schema_arrow.names})")
        start = 0
        for g in range(meta.num_row_groups):
            n = meta.metadata.row_group(g).num_rows
            parts.append(Part(i, start, n, g))
            start += n
        return start, parts
    rows, at = 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                if rows % rows_per_task == 0:
                    parts.append(Part(i, rows, 0, at, number))
                rows += 1
                parts[-1].count += 1
            at += len(line)
    return rows, parts


def read_part(path: str, part: Part) -> list[list[dict]]:
    """The `messages` of one task's rows, each checked (errors name the file and line or row)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).read_row_group(part.offset, columns=["messages"]).column(0).to_pylist()
        for n, messages in enumerate(rows, part.start + 1):
            check_messages(f"{path} row {n}", messages)
        return rows
    out: list[list[dict]] = []
    with open(path, "rb") as f:
        f.seek(part.offset)
        number = part.line - 1
        while len(out) < part.count:
            line, number = f.readline(), number + 1
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where} is not JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise ConfigError(f"{where} has no 'messages' list")
            check_messages(where, record["messages"])
            out.append(record["messages"])
    return out


def check_messages(where: str, messages: list) -> None:
    """Refuse a conversation without messages or with a message lacking `role` or `content`."""
    if not messages or any(not isinstance(m, dict) or "role" not in m or "content" not in m for m in messages):
        raise ConfigError(f"{where}: every message needs 'role' and 'content'")


Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # token ids, labels, response mask (assistant tokens)


def tokenize_messages(tokenizer, messages: list[dict], loss: str, mark_responses: bool = False) -> Sample:
    """Token ids of a conversation in the chat template, its labels (`IGNORE_INDEX` where no loss), and which
    tokens belong to assistant turns (found only for `loss: responses` or `mark_responses`; else all False)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    response = np.zeros(len(ids), dtype=bool)
    if loss == "all" and not mark_responses:
        return ids, ids.copy(), response
    starts = np.asarray([a for a, _ in enc["offset_mapping"]])
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(before):
            raise ConfigError("the chat template does not render conversations as prefixes of each other; "
                              "use loss: all and no response_loss_weight for this source")
        response |= (starts >= len(before)) & (starts < len(through))
    labels = ids.copy() if loss == "all" else np.where(response, ids, IGNORE_INDEX)
    return ids, labels, response


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: the longest item first, each into the fullest row it still fits
    (a new row when none); returns each row's item indices. Items longer than `capacity` are left out."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            continue
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([])
            room, row = capacity, len(rows) - 1
        else:
            room, row = free.pop(at)
        rows[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return rows


LABELLED, RESPONSE = 1, 2  # bits of a row's flags: the token has a label (loss policy), is in an assistant turn


def fill_rows(plan: list[list[int]], get, input_ids: np.ndarray, flags: np.ndarray, doc_lens: np.ndarray,
              row_docs: np.ndarray, first_row: int = 0) -> None:
    """Write rows `first_row ...` of a packing plan: each planned sample's ids and flags one after another
    from the row's start; `get(i)` gives sample i's `(ids, flags)`; `doc_lens[row_docs[r]:]` receives row r's
    sample lengths. Padding (already in the arrays) stays after them."""
    for r, row in enumerate(plan, first_row):
        at, d = 0, int(row_docs[r])
        for i in row:
            ids, fl = get(i)
            input_ids[r, at:at + len(ids)], flags[r, at:at + len(ids)] = ids, fl
            doc_lens[d] = len(ids)
            at, d = at + len(ids), d + 1


def sample_flags(labels: np.ndarray, response: np.ndarray) -> np.ndarray:
    """A tokenized sample's labels and response mask as row flags (uint8)."""
    return (labels != IGNORE_INDEX).astype(np.uint8) * LABELLED | response.astype(np.uint8) * RESPONSE


def decode_row(ids: np.ndarray, flags: np.ndarray, lens: np.ndarray) -> dict[str, np.ndarray]:
    """One packed row from its stored form (`[seq_len]` ids and flags, its samples' lengths) to what a batch
    holds: int64 `input_ids`, `labels` (`IGNORE_INDEX` where unlabelled), `doc_ids` (-1 on padding) and the
    bool `response` mask."""
    ids = ids.astype(np.int64)
    doc_ids = np.full(len(ids), -1, dtype=np.int64)
    doc_ids[:int(lens.sum())] = np.repeat(np.arange(len(lens)), lens)
    return {"input_ids": ids, "labels": np.where(flags & LABELLED, ids, IGNORE_INDEX), "doc_ids": doc_ids,
            "response": (flags & RESPONSE) > 0}


def pack(samples: list[Sample], seq_len: int, pad_id: int,
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Best-fit packing (`best_fit`) in memory: rows `[N, seq_len]` of input ids, labels, document ids
    (padding: -1), response masks, and how many samples were longer than a row (dropped). Training reads the
    same rows from the files `lightning_modules.prepare` writes."""
    plan = best_fit([len(s[0]) for s in samples], seq_len)
    too_long = sum(len(s[0]) > seq_len for s in samples)
    input_ids = np.full((len(plan), seq_len), pad_id, dtype=np.int64)
    flags = np.zeros((len(plan), seq_len), dtype=np.uint8)
    row_docs = np.concatenate([[0], np.cumsum([len(r) for r in plan])]).astype(np.int64)
    doc_lens = np.zeros(int(row_docs[-1]), dtype=np.int64)
    fill_rows(plan, lambda i: (samples[i][0], sample_flags(samples[i][1], samples[i][2])), input_ids, flags,
              doc_lens, row_docs)
    rows = [decode_row(input_ids[r], flags[r], doc_lens[row_docs[r]:row_docs[r + 1]]) for r in range(len(plan))]
    stack = {k: np.stack([row[k] for row in rows]) if rows else np.zeros((0, seq_len), dtype=np.int64)
             for k in ("input_ids", "labels", "doc_ids", "response")}
    return stack["input_ids"], stack["labels"], stack["doc_ids"], stack["response"].astype(bool), too_long
