"""A perfect reader of RULER samples: the right answer recovered from a sample's text alone (its user turn or
the whole rendered prompt), for the test server to reply with and for checking that samples are solvable."""

from __future__ import annotations

import re
from collections import Counter

_NEEDLE = re.compile(r"One of the special magic \w+ for (.+?) is: (\S+?)\.(?=\s|$)")
_NIAH_QUESTION = re.compile(r"What (?:is|are all) the special magic \w+ for (.+?) mentioned in the provided text\?")
_VT_QUESTION = re.compile(r"Find all variables that are assigned the value (\d+) in the text above\.")
_CWE_START, _CWE_END = "Below is a numbered list of words.", "\nQuestion: What are the 10 most common words"
_FWE_START, _FWE_END = "Find the three most frequently appeared coded words. ", "\nQuestion: Do not provide"


def solve(task: str, user: str, qa_answers: dict[str, str] | None = None) -> str:
    """The answer to a RULER sample of `task` read from its text; QA needs `qa_answers` (question -> answer),
    and gives "" for a question it does not hold."""
    if task.startswith("niah"):
        return _niah(user)
    if task == "vt":
        return _vt(user)
    if task == "cwe":
        return _most_common(_between(user, _CWE_START, _CWE_END).split("\n", 1)[-1], r"(?:^|\s)\d+\. ", 10)
    if task == "fwe":
        return _most_common(_between(user, _FWE_START, _FWE_END), r"\s+", 3, skip="...")
    if task.startswith("qa"):
        return _qa(user, qa_answers or {})
    raise ValueError(f"unknown RULER task {task!r}")


def _between(text: str, start: str, end: str) -> str:
    """The text after the last `start` up to the next `end` (the task's own, not an in-context example's)."""
    at = text.rindex(start) + len(start)
    return text[at:text.index(end, at)]


def _niah(text: str) -> str:
    values: dict[str, list[str]] = {}
    for key, value in _NEEDLE.findall(text):
        values.setdefault(key, []).append(value)
    keys = re.split(r",(?: and)? ", _NIAH_QUESTION.findall(text)[-1])
    return " ".join(v for key in keys for v in values.get(key, []))


def _vt(text: str) -> str:
    body = text[text.rindex("Memorize and track the chain(s)"):]
    value = _VT_QUESTION.findall(body)[-1]
    found = [name for name, v in re.findall(r"VAR (\w+) = (\d+)", body) if v == value]
    copies = re.findall(r"VAR (\w+) = VAR (\w+)", body)
    grown = True
    while grown:
        new = [child for child, parent in copies if parent in found and child not in found]
        found += new
        grown = bool(new)
    return " ".join(found)


def _most_common(text: str, separator: str, k: int, skip: str = "") -> str:
    counts = Counter(w for w in re.split(separator, text.strip()) if w and w != skip)
    return " ".join(w for w, _ in counts.most_common(k))


def _qa(text: str, qa_answers: dict[str, str]) -> str:
    tail = text[text.rindex("Question: ") + len("Question: "):]
    asked = [q for q in qa_answers if tail.startswith(q)]
    return qa_answers[max(asked, key=len)] if asked else ""
