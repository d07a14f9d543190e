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
    # long-input: the accepted instruction, also of a sample rejected after it (a resumed run's near-duplicate
    # filter needs it: the instruction was kept when the sample was made)
    instruction: str


class SynthState(SampleInput, SampleOutput, total=False):
    """Long-input (SelfLong) synthesis."""

    sample_id: str
    seed_chunk_id: str
    task_type: str  # the instruction's task type (a key of synth.task_types), drawn from the seed and index
    documents: list[dict[str, Any]]  # {id, title, text, n_tokens, splits} in sample order (splits: QFS piece starts)
    pieces: list[str]  # what the current QFS level summarizes
    summaries: Annotated[list[dict[str, Any]], operator.add]  # {level, index, text | None, error}
    level: int  # QFS levels done
    notes: list[str]  # the final summaries the answer is written from
    notes_tokens: int  # their tokens
    answer: str
    verified: bool | None  # synth.verify: the judge found the answer supported by the notes
    passages: list[dict[str, Any]]  # ACER: what the reader saw, {document (0-based), start, end, text} in its text
    calls: Annotated[int, operator.add]  # LLM calls made for this sample


class SummarizeTask(TypedDict):
    """What one `Send` to the summarize node carries."""

    instruction: str
    text: str
    level: int
    index: int
