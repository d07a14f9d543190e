"""Tolerant parsing of model output: strip reasoning and code fences, find the JSON, validate it."""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")

# Openings of answers that decline the task; compared case-insensitively with the first words.
REFUSAL_OPENINGS = (
    "i'm sorry", "i am sorry", "sorry, i", "i can't", "i cannot", "i can not", "i won't", "i will not",
    "i'm unable", "i am unable", "as an ai", "i apologize",
)


def strip_reasoning(text: str) -> str:
    """Remove `<think>…</think>` blocks (and an unclosed leading one) and surrounding space."""
    text = _THINK.sub("", text)
    if "</think>" in text:  # the opening tag was in the prompt (some chat templates add it)
        text = text.split("</think>", 1)[1]
    return text.strip()


def is_refusal(text: str) -> bool:
    """True when the text opens like a refusal."""
    head = strip_reasoning(text)[:60].lower().lstrip("\"' ")
    return head.startswith(REFUSAL_OPENINGS)


def extract_json(text: str) -> str:
    """The JSON part of a reply: the last fenced block, else the outermost {...} span."""
    text = strip_reasoning(text)
    fences = _FENCE.findall(text)
    if fences:
        text = fences[-1].strip()
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        text = text[start : end + 1]
    return _TRAILING_COMMA.sub(r"\1", text)


def parse_model(text: str, schema: type[T]) -> T:
    """Parse and validate a reply against a pydantic schema; raises ValueError with the reason."""
    candidate = extract_json(text)
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError as err:
        raise ValueError(f"reply is not valid JSON ({err.msg} at position {err.pos})") from None
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"reply does not match the schema ({problems})") from None
