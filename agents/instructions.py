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
    """Near-duplicate check by Jaccard similarity of word 3-grams, over the instructions of lower-indexed
    samples only, so a sample's verdict never depends on which samples happened to finish first.

    Candidates come from a MinHash LSH index (datasketch), queried at a looser threshold than the filter's
    and confirmed by exact Jaccard: a check costs about the same at 70k instructions as at 70.
    """

    def __init__(self, threshold: float = 0.7, num_perm: int = 128) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self._lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=num_perm)
        self._seen: dict[int, frozenset] = {}

    def _minhash(self, grams: frozenset):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([" ".join(g).encode("utf-8") for g in sorted(grams)])
        return m

    def similar(self, text: str, below: int | None = None) -> float:
        """Highest Jaccard similarity to a kept instruction of a sample with index < `below` (None: any)."""
        s = shingles(text)
        keys = self._lsh.query(self._minhash(s)) if self._seen else []
        seen = (self._seen[k] for k in keys if below is None or k < below)
        return max((len(s & t) / len(s | t) for t in seen), default=0.0)

    def add(self, text: str, index: int | None = None) -> None:
        """Remember the accepted instruction of sample `index` (None: the next free key)."""
        index = len(self._seen) if index is None else index
        if index in self._seen:
            return
        grams = shingles(text)
        self._seen[index] = grams
        self._lsh.insert(index, self._minhash(grams))

    def __len__(self) -> int:
        return len(self._seen)


class InOrder:
    """Turns for decisions that must follow index order: `turn(i)` returns once every index below `i` of the
    run has `settle`d (decided, or finished in an earlier run), so the near-duplicate filter sees exactly the
    instructions of lower indices, whatever the completion order, concurrency or kills."""

    def __init__(self, indices: list[int]) -> None:
        import asyncio

        self._order = sorted(set(indices))
        self._settled: set[int] = set()
        self._frontier = 0  # position in _order of the lowest index not yet settled
        self._changed = asyncio.Condition()

    def settle(self, index: int) -> None:
        """Index `index` has decided (or needs no decision); callable from the event loop without awaiting."""
        self._settled.add(index)
        while self._frontier < len(self._order) and self._order[self._frontier] in self._settled:
            self._frontier += 1
        import asyncio

        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        try:
            asyncio.get_running_loop().create_task(wake())
        except RuntimeError:  # no loop yet (settled before the run starts): nobody is waiting
            pass

    def _ready(self, index: int) -> bool:
        return self._frontier >= len(self._order) or self._order[self._frontier] >= index

    async def turn(self, index: int) -> None:
        """Wait until every lower index has settled."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._ready(index))


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

