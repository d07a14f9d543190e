"""Graph state. Keys written by parallel `Send` branches have reducers."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class SampleInput(TypedDict, total=False):
    """What one graph run is given."""

    index: int  # the sample's position in the run: decides its seed and id
    target_tokens: int  # length of the finished sample (long-input and ACER samples)
    question: str  # ACER: the question
    context: str  # ACER: the long context ("" = retrieve documents for the question)


class SampleOutput(TypedDict, total=False):
    """What one graph run returns: a sample, or the step and reason it was rejected."""

    sample: dict[str, Any] | None
    rejection: dict[str, Any] | None


class SynthState(SampleInput, SampleOutput, total=False):
    """Long-input (SelfLong) synthesis."""

    sample_id: str
    seed_chunk_id: str
    instruction: str
    documents: list[dict[str, Any]]  # {id, title, text, n_tokens, splits} in sample order (splits: QFS piece starts)
    pieces: list[str]  # what the current QFS level summarizes
    summaries: Annotated[list[dict[str, Any]], operator.add]  # {level, index, text | None, error}
    level: int  # QFS levels done
    notes: list[str]  # the final summaries the answer is written from
    notes_tokens: int  # their tokens
    answer: str
    calls: Annotated[int, operator.add]  # LLM calls made for this sample


class SummarizeTask(TypedDict):
    """What one `Send` to the summarize node carries."""

    instruction: str
    text: str
    level: int
    index: int
