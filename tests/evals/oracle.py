"""What a perfect reader would answer to an evaluation prompt, found in the prompt alone: the needle tasks
of conf/task (passkey, niah_single) directly, RULER's tasks through `tests.evals.solvers`."""

from __future__ import annotations

import re

PASSKEY = re.compile(r"What is the secret key for (\w+)\?")
NIAH_SINGLE = re.compile(r"What is the special magic number for (.+?) mentioned in the provided text\?")


def solve_any(prompt: str, qa_answers: dict | None = None) -> str:
    """The answer to a passkey, NIAH or RULER prompt, or "" when the prompt is none of them."""
    if m := PASSKEY.search(prompt):
        found = re.findall(rf"The secret key for {re.escape(m[1])} is (\d+)\.", prompt)
        return found[0] if found else ""
    if (m := NIAH_SINGLE.search(prompt)) and "One of the special magic numbers" in prompt:
        found = re.findall(rf"One of the special magic numbers for {re.escape(m[1])} is: (\d+)\.", prompt)
        if found:
            return found[0]
    from tests.evals.solvers import solve

    task = detect_task(prompt)
    return solve(task, prompt, qa_answers) if task else ""


def detect_task(prompt: str) -> str | None:
    """The RULER task family a prompt belongs to, by its template (a representative task name)."""
    for marker, task in (("chain(s) of variable assignment", "vt"), ("Below is a numbered list of words", "cwe"),
                         ("Read the following coded text", "fwe"), ("based on the given documents", "qa_1"),
                         ("special magic uuid", "niah_single_3"), ("special magic number", "niah_multivalue")):
        if marker in prompt:
            return task
    return None
