"""Training data: `messages` JSONL or parquet files only (synthesis samples, short instruction data, the
programmatic needle data that `evaluate.py ... export_training=` writes), mixed, tokenized with the chat
template, packed to the stage length.

- Loss policy per source: `all` (every token, the paper's choice for long samples) or `responses`
  (assistant turns only, for short instruction data).
- Mixture: a source's `weight` is how many times it is used per data epoch (0.5: a seeded half,
  2: twice). The mixed list is shuffled with the seed, then packed best-fit (longest first, each into
  the fullest row it fits) into rows of `seq_len` tokens; each sample is a document (`doc_ids`), so no
  token attends across samples.
  Samples longer than `seq_len` are dropped and counted.
- Every rank of a context-parallel group gets the same rows; each data-parallel group its own.
  The order is a function of the seed and the step, so a resumed run reads exactly what an
  uninterrupted one would have read from that step on.
"""

from __future__ import annotations

import bisect
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_modules.context_parallel import IGNORE_INDEX
from lightning_modules.errors import ConfigError

log = logging.getLogger(__name__)


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


def read_messages(path: str) -> list[list[dict]]:
    """The `messages` of every row of a .jsonl or .parquet file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data file {path} does not exist; fix data.sources[].path or make it "
                          f"(python synthesize.py writes samples.jsonl; python evaluate.py task=passkey "
                          f"export_training={path} export.seq_len=<stage length> writes the passkey task)")
    rows: list[list[dict]] = []
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "messages" not in table.column_names:
            raise ConfigError(f"{path} has no 'messages' column (columns: {table.column_names})")
        rows = table.column("messages").to_pylist()
    else:
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{n} is not JSON ({e.msg}); fix or remove that line") from None
                if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                    raise ConfigError(f"{path}:{n} has no 'messages' list")
                rows.append(record["messages"])
    for n, messages in enumerate(rows, 1):
        if not messages or any(not isinstance(m, dict) or "role" not in m or "content" not in m for m in messages):
            raise ConfigError(f"{path} row {n}: every message needs 'role' and 'content'")
    return rows


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


def pack(samples: list[Sample], seq_len: int, pad_id: int,
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Best-fit packing (`best_fit`): rows `[N, seq_len]` of input ids, labels, document ids (padding: -1),
    response masks, and how many samples were longer than a row (dropped)."""
    plan = best_fit([len(s[0]) for s in samples], seq_len)
    too_long = sum(len(s[0]) > seq_len for s in samples)
    rows = [[samples[i] for i in row] for row in plan]
    input_ids = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    out_labels = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    doc_ids = np.full((len(rows), seq_len), -1, dtype=np.int64)
    responses = np.zeros((len(rows), seq_len), dtype=bool)
    for r, row in enumerate(rows):
        at = 0
        for d, (ids, labels, response) in enumerate(row):
            span = slice(at, at + len(ids))
            input_ids[r, span], out_labels[r, span], doc_ids[r, span], responses[r, span] = ids, labels, d, response
            at += len(ids)
    return input_ids, out_labels, doc_ids, responses, too_long


class PackedRows(Dataset):
    """Packed rows as `{input_ids, labels, doc_ids}` `[seq_len]` int64 tensors and `response` (bool)."""

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, doc_ids: np.ndarray, response: np.ndarray,
                 ) -> None:
        self.input_ids, self.labels, self.doc_ids, self.response = input_ids, labels, doc_ids, response

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.input_ids[i]), "labels": torch.from_numpy(self.labels[i]),
                "doc_ids": torch.from_numpy(self.doc_ids[i]), "response": torch.from_numpy(self.response[i])}


class StepBatchSampler(Sampler[list[int]]):
    """Batches for micro-steps `start .. total-1` of one data-parallel group: micro-step t takes the
    rows at stream positions (t * dp + dp_rank) * B ... + B - 1 of an endless stream of seeded
    permutations (one per data epoch)."""

    def __init__(self, num_rows: int, batch_size: int, dp_size: int, dp_rank: int, seed: int, start: int,
                 total: int) -> None:
        self.n, self.b, self.dp, self.rank, self.seed = num_rows, batch_size, dp_size, dp_rank, seed
        self.start, self.total = start, total
        self._perms: dict[int, np.ndarray] = {}

    def _row(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perms[epoch][offset])

    def __iter__(self):
        for t in range(self.start, self.total):
            first = (t * self.dp + self.rank) * self.b
            yield [self._row(first + j) for j in range(self.b)]

    def __len__(self) -> int:
        # the whole stage, not what is left: a resumed run's loop counts its batches from the restored
        # step, so the epoch (one per stage) ends at `total` either way
        return self.total


class PackedDataModule(L.LightningDataModule):
    """Reads, mixes, tokenizes and packs the sources once per run; serves step-addressed batches."""

    def __init__(self, tokenizer, sources: list[dict], seq_len: int, batch_size: int = 1, seed: int = 0,
                 cp_degree: int = 1, max_steps: int = 1, num_workers: int = 0, mark_responses: bool = False) -> None:
        super().__init__()
        self.mark_responses = mark_responses  # find assistant tokens for a weighted response loss
        self.tokenizer, self.seq_len, self.batch_size, self.seed = tokenizer, seq_len, batch_size, seed
        self.sources = [Source(**s) for s in sources]
        self.cp_degree, self.max_steps, self.num_workers = cp_degree, max_steps, num_workers
        self.rows: PackedRows | None = None
        self.stats = PackStats(seq_len=seq_len)

    def samples(self) -> list[Sample]:
        """The mixed, shuffled, tokenized samples of one data epoch."""
        rng = random.Random(self.seed)
        mixed: list[Sample] = []
        for i, source in enumerate(self.sources):
            if source.loss not in ("all", "responses"):
                raise ConfigError(f"data.sources[{i}].loss must be 'all' or 'responses', not {source.loss!r}")
            if source.format != "messages":
                raise ConfigError(f"data.sources[{i}].format must be 'messages', not {source.format!r} (generated "
                                  f"tasks reach training as files: see conf/data/passkey.yaml)")
            if not source.path:
                raise ConfigError(f"data.sources[{i}] (format messages) needs a path")
            items = [tokenize_messages(self.tokenizer, m, source.loss, self.mark_responses)
                     for m in read_messages(source.path)]
            whole, part = divmod(source.weight, 1.0)
            chosen = items * int(whole) + rng.sample(items, int(round(part * len(items))))
            self.stats.per_source[source.path] = len(chosen)
            mixed += chosen
        rng.shuffle(mixed)
        return mixed

    def setup(self, stage: str | None = None) -> None:
        """Pack once (every rank does the same, deterministically)."""
        if self.rows is not None:
            return
        mixed = self.samples()
        input_ids, labels, doc_ids, response, too_long = pack(mixed, self.seq_len, self.tokenizer.pad_token_id)
        self.stats.samples, self.stats.too_long, self.stats.rows = len(mixed), too_long, len(input_ids)
        self.stats.tokens = int((doc_ids >= 0).sum())
        if not len(input_ids):
            raise ConfigError(f"no sample fits seq_len={self.seq_len} ({too_long} were longer); "
                              f"check data.sources or pick a longer stage")
        log.info("packed %d samples into %d rows of %d tokens (fill %.1f%%); %d longer than the stage, dropped",
                 len(mixed), len(input_ids), self.seq_len, 100 * self.stats.fill, too_long)
        self.rows = PackedRows(input_ids, labels, doc_ids, response)

    def train_dataloader(self) -> DataLoader:
        """Batches from the step the trainer is at (0, or where a resumed run stopped)."""
        trainer, accumulate = self.trainer, self.trainer.accumulate_grad_batches
        sampler = StepBatchSampler(len(self.rows), self.batch_size, trainer.world_size // self.cp_degree,
                                   trainer.global_rank // self.cp_degree, self.seed,
                                   trainer.global_step * accumulate, self.max_steps * accumulate)
        return DataLoader(self.rows, batch_sampler=sampler, num_workers=self.num_workers)
