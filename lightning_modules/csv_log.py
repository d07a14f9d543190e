"""A CSV logger whose `metrics.csv` survives a resume (Lightning's deletes it when the folder is not empty)."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    """Keeps the rows an earlier run wrote before the first step this run logs; rows at or after it (logged by a
    killed run after its last checkpoint) are replaced by this run's."""

    def _check_log_dir_exists(self) -> None:
        self._earlier: list[dict[str, str]] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self._earlier = list(csv.DictReader(f))
            os.remove(self.metrics_file_path)  # written again, whole, at the first save

    def save(self) -> None:
        """Save recorded metrics, after the kept earlier rows on the first save."""
        if self._earlier is not None and self.metrics:  # the first save with rows (an empty one comes first)
            earlier, self._earlier = self._earlier, None
            first = min(int(m["step"]) for m in self.metrics)
            kept = [row for row in earlier if row.get("step") not in (None, "") and int(row["step"]) < first]
            self.metrics = [{k: v for k, v in row.items() if v != ""} for row in kept] + self.metrics
        super().save()


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` with `metrics.csv` continued across a resume (see `_KeepingWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, made on first use."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
