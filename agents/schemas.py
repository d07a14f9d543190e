"""Structured outputs the LLM is asked for (sent as JSON schemas, validated with pydantic)."""

from pydantic import BaseModel, ConfigDict, Field


class Instruction(BaseModel):
    """A user request, written by the LLM (SelfLong step 1, or back-translated from a document)."""

    model_config = ConfigDict(extra="forbid")
    instruction: str = Field(description="the user's request")


class ReasonedAnswer(BaseModel):
    """ACER's answer: the reasoning over the top chunks, then the final answer."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="step-by-step reasoning over the passages")
    answer: str = Field(description="the final answer")


class Verdict(BaseModel):
    """A judge's verdict: whether an answer is supported by its notes (or a text fits its instruction)."""

    model_config = ConfigDict(extra="forbid")
    supported: bool = Field(description="true when supported")
    reason: str = Field(description="the first unsupported statement, or why it is supported")
