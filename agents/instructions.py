"""Step 1 of SelfLong synthesis: the instruction, with its checks and near-duplicate filter."""

from __future__ import annotations

import re

from agents.llm import LLMClient
from agents.parsing import is_refusal
from agents.prompts import INSTRUCTION_PROMPT, SYSTEM_PROMPT
from agents.schemas import Instruction

_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of a lower-cased text (the whole text when it is shorter than n words)."""
    words = _WORD.findall(text.lower())
    return frozenset(tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1)))


class InstructionDeduper:
    """Near-duplicate check by Jaccard similarity of word 3-grams."""

    def __init__(self, threshold: float = 0.7) -> None:
        self.threshold = threshold
        self._seen: list[frozenset] = []

    def similar(self, text: str) -> float:
        """Highest Jaccard similarity to any instruction kept so far."""
        s = shingles(text)
        return max((len(s & t) / len(s | t) for t in self._seen), default=0.0)

    def add(self, text: str) -> None:
        """Remember an accepted instruction."""
        self._seen.append(shingles(text))

    def __len__(self) -> int:
        return len(self._seen)


def instruction_problem(text: str, min_words: int, max_words: int) -> str | None:
    """Why an instruction is unusable (empty, refusal, too short or too long), or None."""
    words = len(text.split())
    if not text.strip():
        return "empty instruction"
    if is_refusal(text):
        return "refused to write an instruction"
    if words < min_words:
        return f"instruction too short ({words} words < {min_words})"
    if words > max_words:
        return f"instruction too long ({words} words > {max_words})"
    return None


async def ask_for_instruction(llm: LLMClient, prompt: str) -> str:
    """Send a prompt that asks for `{"instruction": ...}`; the instruction with whitespace collapsed."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    reply = await llm.json(messages, Instruction, max_tokens=512)
    return " ".join(reply.instruction.split())


async def write_instruction(llm: LLMClient, random_chunk: str) -> str:
    """Ask for one multi-document instruction, the random chunk prepended for diversity."""
    return await ask_for_instruction(llm, INSTRUCTION_PROMPT.format(random_chunk=random_chunk))

