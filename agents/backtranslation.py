"""Long-output data (SelfLong §3.1): the instruction for which a long document is the answer."""

from __future__ import annotations

from agents.llm import LLMClient
from agents.prompts import BACKTRANSLATION_PROMPT, SYSTEM_PROMPT
from agents.schemas import Instruction


async def back_translate(llm: LLMClient, document: str) -> str:
    """A writing instruction whose ideal response is `document`."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": BACKTRANSLATION_PROMPT.format(document=document)},
    ]
    reply = await llm.json(messages, Instruction, max_tokens=512)
    return " ".join(reply.instruction.split())
