"""Long-output data (SelfLong §3.1): the instruction for which a long document is the answer."""

from __future__ import annotations

import re
from collections import Counter

from agents.instructions import ask_for_instruction
from agents.llm import LLMClient
from agents.prompts import BACKTRANSLATION_PROMPT


async def back_translate(llm: LLMClient, document: str) -> str:
    """A writing instruction whose ideal response is `document`."""
    return await ask_for_instruction(llm, BACKTRANSLATION_PROMPT.format(document=document))


_WORD = re.compile(r"[^\W\d_]{4,}")
_COMMON = frozenset("""that this with from have will your what when where which their there these those them they
them been were would could should about into than then some more most also only over such very each other write
text document documents long detailed piece article essay story explain describe covering cover include including
using based make made like just well many much need needs must""".split())


def topic_words(text: str, top: int = 40) -> set[str]:
    """The document's most frequent words of four letters or more, common words left out."""
    counts = Counter(w for w in _WORD.findall(text.lower()) if w not in _COMMON)
    return {w for w, _ in counts.most_common(top)}


def instruction_fits(instruction: str, document: str, title: str = "") -> str | None:
    """Why a back-translated instruction does not ask for this document's content (None when it may): it must
    name the document's title or at least one of its topic words."""
    words = {w for w in _WORD.findall(instruction.lower()) if w not in _COMMON}
    if words & (topic_words(document) | topic_words(title, top=10)):
        return None
    return "the instruction shares no topic word with its document (it does not ask for this text)"
