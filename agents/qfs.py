"""Step 3 of SelfLong synthesis: recursive query-focused summarization (QFS).

Level 0 packs the retrieved documents into chunks of at most `chunk_tokens`; every chunk is
summarized for the instruction (a "nothing relevant" reply is dropped); while the summaries exceed
the budget they are packed into groups of at most `chunk_tokens` and summarized again.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.llm import LLMClient
from agents.prompts import NOTHING_RELEVANT, QFS_PROMPT, SYSTEM_PROMPT
from agents.tokens import ChatTokenCounter


def pack(counter: ChatTokenCounter, texts: Sequence[str], chunk_tokens: int, sep: str = "\n\n") -> list[str]:
    """Join consecutive texts into pieces of at most `chunk_tokens`, splitting any text longer than that."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for text in texts:
        for part in counter.split(text, chunk_tokens):
            n = counter.count(part)
            if current and size + n > chunk_tokens:
                pieces.append(sep.join(current))
                current, size = [], 0
            current.append(part)
            size += n
    if current:
        pieces.append(sep.join(current))
    return pieces


async def summarize(llm: LLMClient, instruction: str, text: str) -> str | None:
    """What `text` holds that is relevant to `instruction`, or None when nothing is."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": QFS_PROMPT.format(instruction=instruction, text=text, nothing=NOTHING_RELEVANT)},
    ]
    summary = await llm.text(messages)
    if NOTHING_RELEVANT in summary[: len(NOTHING_RELEVANT) + 20] or not summary.strip():
        return None
    return summary
