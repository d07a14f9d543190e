"""The target's side of a prompt: its tokenizer and chat template, and fitting a text to a token budget.

A prompt is rendered as RULER renders it against vLLM: the task text as one user turn in the target's
chat template, the generation prompt, then the task's answer prefix. If the target's tokenizer adds a BOS
token itself (Llama-3 does), the template's textual BOS is dropped, so the server's tokenization holds it
once. `count` is the number of tokens the server will see.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agents.errors import InputError
from agents.tokens import DEFAULT_CHAT_TEMPLATE


class PromptFormat:
    """Renders task text into the prompt a target sees and counts it in the target's tokens."""

    def __init__(self, tokenizer, chat_template: str | None = None, use_chat_template: bool = True) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.use_chat_template = use_chat_template
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        self._fast = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # no Python wrapper per call
        self._fast.no_truncation()
        self._fast.no_padding()
        bos = tokenizer.bos_token_id
        adds_bos = bos is not None and self._fast.encode("a", add_special_tokens=True).ids[:1] == [bos]
        self.bos_text = tokenizer.bos_token if adds_bos else ""

    @classmethod
    def from_folder(cls, path: str, chat_template: str | None = None, use_chat_template: bool = True,
                    ) -> PromptFormat:
        """Load the tokenizer of a local model folder (nothing is fetched from a hub)."""
        from transformers import AutoTokenizer

        folder = Path(path).expanduser()
        if not (folder / "tokenizer_config.json").is_file():
            raise InputError(f"no tokenizer in {folder} (tokenizer_config.json missing): set target.tokenizer "
                             f"(or target.path) to a local model folder with the target's tokenizer")
        return cls(AutoTokenizer.from_pretrained(str(folder)), chat_template, use_chat_template)

    def render(self, user: str, answer_prefix: str = "") -> str:
        """The completions prompt: `user` in the chat template, the generation prompt, the answer prefix."""
        if not self.use_chat_template:
            return user + answer_prefix
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True, chat_template=self.chat_template)
        if self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text):]
        return text + answer_prefix

    def render_conversation(self, messages: list[dict[str, str]]) -> str:
        """A whole conversation as training renders it (the template's BOS kept; see `count_training`)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.chat_template)

    def count(self, prompt: str) -> int:
        """Tokens the server makes of a prompt (special tokens added as the tokenizer adds them)."""
        return len(self._fast.encode(prompt, add_special_tokens=True).ids)

    def count_training(self, text: str) -> int:
        """Tokens training makes of a rendered conversation (no special tokens added)."""
        return len(self._fast.encode(text, add_special_tokens=False).ids)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token of a plain text."""
        return self._fast.encode(text, add_special_tokens=False).offsets


def fit(build: Callable[[int], str], count: Callable[[str], int], budget: int, guess: int, lo: int = 0,
        tolerance: float = 0.01, max_steps: int = 40) -> tuple[int, str, int]:
    """The largest unit count `n >= lo` with `count(build(n)) <= budget`, searched from `guess` by secant
    steps kept inside a shrinking bracket; stops early once the text is within `tolerance` of the budget.
    Returns (n, text, tokens). Raises InputError when even `lo` units do not fit."""
    best: tuple[int, str, int] | None = None
    hi: int | None = None  # smallest n known not to fit
    n, c = max(lo, guess), 0
    for _ in range(max_steps):
        text = build(n)
        c = count(text)
        if c <= budget:
            if best is None or n > best[0]:
                best = (n, text, c)
            if budget - c <= tolerance * budget:
                break
        else:
            hi = n if hi is None else min(hi, n)
            if n <= lo:
                break
        left = best[0] if best else lo - 1  # largest n known to fit
        if hi is not None and hi - left <= 1:
            break
        per_unit = c / max(n, 1)
        step = int(round((budget - c) / per_unit)) if per_unit > 0 else 0
        proposal = min(n + step, n - 1) if c > budget else max(n + step, n + 1)
        lower, upper = left + 1 if best else lo, (hi - 1) if hi is not None else max(proposal, left + 1)
        if not lower <= proposal <= upper:
            proposal = (lower + upper + 1) // 2
        n = proposal
    if best is None:
        raise InputError(f"even the shortest prompt has {c} tokens, over the cell's budget of {budget}: "
                         f"use a longer length")
    return best
