"""The training data of a stage: the mixture prepared once on disk (`lightning_modules.prepare`), read by
memory map, served in step-addressed batches.

- Every rank of a context-parallel group gets the same rows; each data-parallel group its own, and reads
  only those rows from the mapped files.
- The order is a function of the seed and the step, so a resumed run reads exactly what an uninterrupted
  one would have read from that step on.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Sampler

from lightning_modules.data import PackStats, Source
from lightning_modules.prepare import PreparedRows, load_stats, prepare

log = logging.getLogger(__name__)


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
    """The stage's mixture, prepared once into `prepared_dir` (or reused from there), served in step-addressed
    batches read by memory map."""

    def __init__(self, tokenizer, sources: list[dict], seq_len: int, batch_size: int = 1, seed: int = 0,
                 cp_degree: int = 1, max_steps: int = 1, num_workers: int = 0, mark_responses: bool = False,
                 prepared_dir: str = "data/prepared", num_proc: int = 1) -> None:
        super().__init__()
        self.mark_responses = mark_responses  # find assistant tokens for a weighted response loss
        self.tokenizer, self.seq_len, self.batch_size, self.seed = tokenizer, seq_len, batch_size, seed
        self.sources = [Source(**s) for s in sources]
        self.cp_degree, self.max_steps, self.num_workers = cp_degree, max_steps, num_workers
        self.prepared_dir, self.num_proc = prepared_dir, num_proc
        self.rows: PreparedRows | None = None
        self.stats = PackStats(seq_len=seq_len)

    def setup(self, stage: str | None = None) -> None:
        """Prepare the mixture unless a preparation with its fingerprint exists (one process builds, the
        others wait), then map its rows."""
        if self.rows is not None:
            return
        folder = prepare(self.tokenizer, self.sources, self.seq_len, self.seed, self.mark_responses,
                         self.prepared_dir, self.num_proc)
        self.stats = load_stats(folder)
        log.info("%d samples in %d rows of %d tokens (fill %.1f%%); %d longer than the stage, dropped; from %s",
                 self.stats.samples, self.stats.rows, self.seq_len, 100 * self.stats.fill, self.stats.too_long,
                 folder)
        self.rows = PreparedRows(folder)

    def train_dataloader(self) -> DataLoader:
        """Batches from the step the trainer is at (0, or where a resumed run stopped)."""
        trainer, accumulate = self.trainer, self.trainer.accumulate_grad_batches
        sampler = StepBatchSampler(len(self.rows), self.batch_size, trainer.world_size // self.cp_degree,
                                   trainer.global_rank // self.cp_degree, self.seed,
                                   trainer.global_step * accumulate, self.max_steps * accumulate)
        return DataLoader(self.rows, batch_sampler=sampler, num_workers=self.num_workers)
