"""Random keys and values for needles, drawn as RULER draws them, from a seeded `random.Random`.

RULER's word keys are `adjective-noun` pairs from the `wonderwords` lists (drawn here as two choices
instead of materialising all 6M pairs); numbers have 7 digits; uuids are version-4 from 128 random bits.
The passkey value is 5 distinct digits with no leading zero: in a digit-free haystack the only number.
"""

from __future__ import annotations

import functools
import random
import uuid

NAMES = ("Ada", "Alan", "Barbara", "Claude", "Dennis", "Donald", "Edsger", "Frances", "Grace", "Guido", "Hedy",
         "John", "Ken", "Leslie", "Linus", "Margaret", "Niklaus", "Radia", "Richard", "Tim", "Tony", "Vint")


@functools.cache
def word_lists() -> dict[str, list[str]]:
    """RULER's vocabularies: `wonderwords`' nouns, adjectives and verbs, sorted and deduplicated."""
    from wonderwords.random_word import _get_words_from_text_file

    return {kind: sorted(set(_get_words_from_text_file(f"{kind}list.txt"))) for kind in ("noun", "adjective", "verb")}


def draw(kind: str, rng: random.Random) -> str:
    """One random `kind`: names, words (adjective-noun), numbers (7 digits), uuids, or passkey."""
    if kind == "names":
        return rng.choice(NAMES)
    if kind == "words":
        lists = word_lists()
        return f"{rng.choice(lists['adjective'])}-{rng.choice(lists['noun'])}"
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "passkey":
        first = rng.choice("123456789")
        return first + "".join(rng.sample([d for d in "0123456789" if d != first], 4))
    raise ValueError(f"unknown needle kind {kind!r} (names, words, numbers, uuids, passkey)")
