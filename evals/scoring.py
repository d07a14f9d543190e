"""RULER's deterministic scores (`scripts/eval/synthetic/constants.py`), per example and per cell.

`string_match_all`: the fraction of reference strings found, case-insensitively, in the prediction.
`string_match_part`: 1 if any reference is found. Cell scores are means × 100, rounded to 2 places as
RULER rounds them. Predictions are post-processed as RULER does: stripped, control characters turned
into newlines.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's `postprocess_pred`: strip, control characters to newlines, strip again."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def match_all(prediction: str, references: list[str]) -> float:
    """Fraction of `references` contained in `prediction` (case-insensitive), in [0, 1]."""
    pred = prediction.lower()
    return sum(1.0 for r in references if r.lower() in pred) / len(references)


def match_part(prediction: str, references: list[str]) -> float:
    """1.0 if any of `references` is contained in `prediction` (case-insensitive), else 0.0."""
    pred = prediction.lower()
    return 1.0 if any(r.lower() in pred for r in references) else 0.0


METRICS = {"all": match_all, "part": match_part}


def score(prediction: str, references: list[str], metric: str) -> float:
    """One example's score in [0, 1] under `metric` ("all" or "part"), after RULER's post-processing."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    return METRICS[metric](postprocess(prediction), references)


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's `string_match_all` over a list: mean fraction found × 100, rounded to 2 places."""
    return round(sum(match_all(postprocess(p), r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's `string_match_part` over a list: share with any reference found × 100, rounded."""
    return round(sum(match_part(postprocess(p), r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)
