"""Step 1 of SelfLong synthesis: the instruction, with its checks and near-duplicate filter."""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from agents.errors import InputError
from agents.llm import LLMClient
from agents.parsing import is_refusal
from agents.prompts import INSTRUCTION_PROMPT, INSTRUCTION_TEMPLATES, SYSTEM_PROMPT
from agents.schemas import Instruction

_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of a lower-cased text (the whole text when it is shorter than n words)."""
    words = _WORD.findall(text.lower())
    return frozenset(tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1)))


class InstructionDeduper:
    """Near-duplicate checks over the instructions of lower-indexed samples only, so a sample's verdict never
    depends on which samples happened to finish first: by word 3-grams (`similar`) and by meaning (`closest_meaning`,
    the cosine of embeddings, which also catches paraphrases that share few words).

    3-gram candidates come from a MinHash LSH index (datasketch), queried at a looser threshold than the filter's
    and confirmed by exact Jaccard: a check costs about the same at 70k instructions as at 70. Embeddings are one
    float32 matrix, compared in one product.
    """

    def __init__(self, threshold: float = 0.7, num_perm: int = 128) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self._lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=num_perm)
        self._seen: dict[int, frozenset] = {}
        self._meaning_lock = threading.Lock()
        self._unembedded: dict[int, str] = {}  # kept without a vector (an earlier run's): embedded when first needed
        self._vectors: np.ndarray | None = None  # [capacity, D]; the first _n rows are kept instructions
        self._keys = np.zeros(0, dtype=np.int64)  # their sample indices
        self._n = 0

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

    def closest_meaning(self, vector: np.ndarray, below: int | None = None,
                        embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> float:
        """Highest cosine similarity of `vector` (L2-normalised) to a kept instruction of a sample with index <
        `below` (None: any). Kept instructions added without a vector are first embedded with `embed`, in one batch."""
        with self._meaning_lock:
            pending = sorted(self._unembedded.items())
        if pending:
            if embed is None:
                raise ValueError("kept instructions without a vector need `embed`")
            vectors = embed([text for _, text in pending])
            with self._meaning_lock:
                for (index, _), v in zip(pending, vectors):
                    if self._unembedded.pop(index, None) is not None:
                        self._store(index, v)
        with self._meaning_lock:
            if not self._n:
                return 0.0
            cosines = self._vectors[: self._n] @ np.asarray(vector, dtype=np.float32)
            if below is not None:
                cosines = cosines[self._keys[: self._n] < below]
            return float(cosines.max()) if len(cosines) else 0.0

    def _store(self, index: int, vector: np.ndarray) -> None:
        """Append one embedding (the caller holds the lock); the matrix doubles when full."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._vectors is None or self._n == len(self._vectors):
            grown = np.empty((max(16, 2 * self._n), len(vector)), dtype=np.float32)
            keys = np.empty(len(grown), dtype=np.int64)
            if self._n:
                grown[: self._n], keys[: self._n] = self._vectors[: self._n], self._keys[: self._n]
            self._vectors, self._keys = grown, keys
        self._vectors[self._n], self._keys[self._n] = vector, index
        self._n += 1

    def add(self, text: str, index: int | None = None, vector: np.ndarray | None = None) -> None:
        """Remember the accepted instruction of sample `index` (None: the next free key), with its embedding when
        known (else it is embedded on the first `closest_meaning`)."""
        index = len(self._seen) if index is None else index
        if index in self._seen:
            return
        grams = shingles(text)
        self._seen[index] = grams
        self._lsh.insert(index, self._minhash(grams))
        with self._meaning_lock:
            if vector is None:
                self._unembedded[index] = text
            else:
                self._store(index, vector)

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


def task_weights(spec: str | Mapping[str, float]) -> list[tuple[str, float]]:
    """`synth.task_types` (a mapping of task type -> weight, or its JSON) as (type, weight) pairs of positive
    weight, in name order; InputError for an unknown type, a negative weight or no positive one."""
    weights = json.loads(spec) if isinstance(spec, str) else dict(spec)
    if not isinstance(weights, dict):
        raise InputError(f"synth.task_types must map task types to weights, got {spec!r}")
    unknown = sorted(set(weights) - set(INSTRUCTION_TEMPLATES))
    if unknown:
        raise InputError(f"synth.task_types: unknown task types {unknown}; known: {sorted(INSTRUCTION_TEMPLATES)}")
    bad = {k: w for k, w in weights.items() if isinstance(w, bool) or not isinstance(w, int | float) or w < 0}
    if bad or not any(w > 0 for w in weights.values()):
        raise InputError(f"synth.task_types: weights must be numbers >= 0, at least one > 0; got {weights}")
    return [(name, float(w)) for name, w in sorted(weights.items()) if w > 0]


def draw_task_type(weights: Sequence[tuple[str, float]], rng: random.Random) -> str:
    """One task type, with probability proportional to its weight (one `rng.random()` draw)."""
    x = rng.random() * sum(w for _, w in weights)
    for name, w in weights:
        x -= w
        if x < 0:
            return name
    return weights[-1][0]  # x == total after rounding


async def write_instruction(llm: LLMClient, random_chunk: str, template: str = INSTRUCTION_PROMPT) -> str:
    """Ask for one multi-document instruction with `template` (a task type's, `INSTRUCTION_TEMPLATES`), the random
    chunk prepended for diversity."""
    return await ask_for_instruction(llm, template.format(random_chunk=random_chunk))

