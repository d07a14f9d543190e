"""Long-output data (SelfLong §3.1): the instruction for which a long document is the answer."""

from __future__ import annotations

from agents.instructions import ask_for_instruction
from agents.llm import LLMClient
from agents.prompts import BACKTRANSLATION_PROMPT


async def back_translate(llm: LLMClient, document: str) -> str:
    """A writing instruction whose ideal response is `document`."""
    return await ask_for_instruction(llm, BACKTRANSLATION_PROMPT.format(document=document))
