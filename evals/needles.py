"""The one generator of programmatic needle data: passkey and NIAH samples for evaluation, and the same
samples as `messages` JSONL for training.

A needle format holds the needle, the question template and the answer prefix (all in config):
`passkey` is the format the tiny model trains on, `niah_single` RULER's single-needle wording. A sample's
prompt (chat template, answer prefix, and the generation budget) is fitted to its length in the target's
tokens within `tolerance`; the needle sits at a sentence boundary at the asked depth.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from evals.haystack import Haystack, insert_at_sentence
from evals.prompting import PromptFormat, fit
from evals.samples import EvalSample
from evals.words import draw


MIN_FILLER = 32  # fewest haystack tokens in a training conversation


@dataclass(frozen=True)
class NeedleFormat:
    """Templates of one needle task. Fields: `{key}`, `{value}` in `needle`, `answer_prefix`, `answer`;
    `{context}` (haystack with the needle) and `{key}` in `template`."""

    needle: str
    template: str
    answer_prefix: str
    answer: str = " {value}"  # what follows the prefix in a training reply
    keys: str = "names"
    values: str = "passkey"
    max_tokens: int = 16


def _user(nf: NeedleFormat, hay: Haystack, start: int, n: int, needle: str, depth: float, key: str) -> str:
    return nf.template.format(context=insert_at_sentence(hay.window(start, n), needle, depth), key=key)


def needle_sample(rng: random.Random, hay: Haystack, fmt: PromptFormat, nf: NeedleFormat, task: str, length: int,
                  depth: float, index: int, tolerance: float = 0.01) -> EvalSample:
    """One evaluation sample: prompt tokens + `max_tokens` within `tolerance` below `length`."""
    key, value = draw(nf.keys, rng), draw(nf.values, rng)
    needle, prefix = nf.needle.format(key=key, value=value), nf.answer_prefix.format(key=key)
    start = hay.random_start(rng)
    budget = length - nf.max_tokens

    def build(n: int) -> str:
        return fmt.render(_user(nf, hay, start, n, needle, depth, key), prefix)

    n, prompt, tokens = fit(build, fmt.count, budget, guess=budget - fmt.count(build(0)), tolerance=tolerance)
    return EvalSample(task=task, length=length, index=index, user=_user(nf, hay, start, n, needle, depth, key),
                      answer_prefix=prefix, answers=[value], max_tokens=nf.max_tokens, metric="all", depth=depth,
                      prompt=prompt, n_tokens=tokens + nf.max_tokens, meta={"key": key})


def training_record(rng: random.Random, hay: Haystack, fmt: PromptFormat, nf: NeedleFormat, n_tokens: int,
                    tolerance: float = 0.01) -> dict:
    """One training conversation of about `n_tokens` tokens as training tokenizes it (chat template included):
    the user turn holds the haystack and question, the assistant turn the answer prefix and the value. A length
    too short for the question and answer is raised to hold at least `MIN_FILLER` tokens of haystack."""
    key, value = draw(nf.keys, rng), draw(nf.values, rng)
    needle, start, depth = nf.needle.format(key=key, value=value), hay.random_start(rng), rng.random()
    reply = nf.answer_prefix.format(key=key).lstrip() + nf.answer.format(value=value)

    def build(n: int) -> str:
        return json.dumps([_user(nf, hay, start, n, needle, depth, key), reply])

    def count(blob: str) -> int:
        user, assistant = json.loads(blob)
        return fmt.count_training(fmt.render_conversation([{"role": "user", "content": user},
                                                           {"role": "assistant", "content": assistant}]))

    bare = count(build(0))
    n_tokens = max(n_tokens, bare + MIN_FILLER)
    _, blob, tokens = fit(build, count, n_tokens, guess=n_tokens - bare, tolerance=tolerance)
    user, assistant = json.loads(blob)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"id": hashlib.sha256(blob.encode()).hexdigest()[:32], "kind": "programmatic_needle", "messages": messages,
            "target_tokens": n_tokens, "n_tokens": tokens, "answer": value,
            "provenance": {"generator": "evals.needles", "programmatic": True, "depth": round(depth, 4)}}


def write_training_jsonl(path: str | Path, hay: Haystack, fmt: PromptFormat, nf: NeedleFormat, samples: int,
                         seq_len: int, min_fraction: float = 0.25, seed: int = 0) -> Path:
    """`samples` training conversations with lengths drawn uniformly from [min_fraction, 1] x `seq_len`
    tokens, written whole or not at all (a `.partial` file renamed when complete)."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for _ in range(samples):
            n = rng.randint(max(64, int(min_fraction * seq_len)), seq_len)
            f.write(json.dumps(training_record(rng, hay, fmt, nf, n), ensure_ascii=False) + "\n")
    os.replace(partial, path)
    return path
