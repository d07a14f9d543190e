"""metrics.csv continues across a resume instead of being deleted."""

import csv

from lightning_modules.csv_log import ResumableCSVLogger


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_run_keeps_the_rows_before_its_first_step_and_replaces_the_rest(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="logs", version="")
    for step in range(6):  # a run killed after step 5, its last checkpoint at step 4
        first.log_metrics({"train/loss": 10.0 - step}, step)
    first.save()
    resumed = ResumableCSVLogger(tmp_path, name="logs", version="")
    resumed.log_hyperparams({"lr": 0.1})  # Lightning saves once with no rows first
    resumed.save()
    for step in range(4, 8):
        resumed.log_metrics({"train/loss": 20.0 - step, "lr": 0.1}, step)
    resumed.save()
    resumed.log_metrics({"train/loss": 1.0}, 8)
    resumed.save()
    rows = _rows(tmp_path / "logs" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(9))
    assert [float(r["train/loss"]) for r in rows] == [10, 9, 8, 7, 16, 15, 14, 13, 1]
    assert [r["lr"] for r in rows] == ["", "", "", "", "0.1", "0.1", "0.1", "0.1", ""]
    fresh = ResumableCSVLogger(tmp_path / "new", name="logs", version="")
    fresh.log_metrics({"train/loss": 3.0}, 0)
    fresh.save()
    assert _rows(tmp_path / "new" / "logs" / "metrics.csv") == [{"train/loss": "3.0", "step": "0"}]
