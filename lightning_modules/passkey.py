"""A programmatic, learnable long-context task for `model=tiny`: find a passkey in a haystack.

The haystack is Python's own documentation (`pydoc_data.topics`, always installed, ASCII only) with
every digit replaced by `#`, so the 5 distinct digits of the key are the only digits in the text. A needle
` The secret key for <Name> is <key>. ` sits at a random depth and the text ends with the question
and the answer: `...What is the secret key for <Name>? The secret key for <Name> is <key>`.
Training split: the first 90% of the haystack; evaluation: the rest.
"""

from __future__ import annotations

import random
import re

NAMES = ("Ada", "Alan", "Barbara", "Claude", "Dennis", "Donald", "Edsger", "Frances", "Grace", "Guido", "Hedy",
         "John", "Ken", "Leslie", "Linus", "Margaret", "Niklaus", "Radia", "Richard", "Tim", "Tony", "Vint")


def haystack(split: str = "train") -> str:
    """The digit-free documentation text of a split ("train": first 90%, "eval": the rest)."""
    from pydoc_data.topics import topics

    text = re.sub(r"[0-9]", "#", " ".join(topics[k] for k in sorted(topics)))
    text = re.sub(r"\s+", " ", text).encode("ascii", "ignore").decode()  # one byte per character
    cut = int(len(text) * 0.9)
    return text[:cut] if split == "train" else text[cut:]


def passkey_text(rng: random.Random, n_chars: int, hay: str, depth: float | None = None) -> tuple[str, str]:
    """One sample of exactly `n_chars` ASCII characters and its 5-digit key."""
    name = rng.choice(NAMES)
    first = rng.choice("123456789")  # no leading zero, five distinct digits
    key = first + "".join(rng.sample([d for d in "0123456789" if d != first], 4))
    needle = f" The secret key for {name} is {key}. "
    tail = f"\nWhat is the secret key for {name}? The secret key for {name} is {key}"
    room = n_chars - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"a passkey sample needs at least {len(needle) + len(tail)} characters, got {n_chars}")
    start = rng.randrange(0, len(hay) - room)
    filler = hay[start:start + room]
    at = int(round((rng.random() if depth is None else depth) * room))
    return filler[:at] + needle + filler[at:] + tail, key
