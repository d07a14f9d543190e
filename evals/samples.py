"""What one evaluation example is, and the key that makes runs resumable."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass
class EvalSample:
    """One prompt to send and the strings its reply is scored against.

    `user` is the task text (template filled, haystack included): what `api=chat` sends as the user turn.
    `prompt` is what `api=completions` sends: `user` in the target's chat template with the answer prefix
    appended (pre-generated data carries only this). `n_tokens` counts the prompt plus `max_tokens`, in the
    target's tokenizer: the length the cell stands for.
    """

    task: str
    length: int
    index: int
    user: str
    answer_prefix: str
    answers: list[str]
    max_tokens: int
    metric: str = "all"  # "all": string_match_all; "part": string_match_part
    depth: float | None = None  # needle depth in [0, 1] (NIAH cells); None elsewhere
    prompt: str | None = None
    n_tokens: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def cell(self) -> tuple[str, int, float | None]:
        """(task, length, depth): the unit a report aggregates and the progress bar counts."""
        return self.task, self.length, self.depth

    def key(self, api: str) -> str:
        """Hash of what is sent (API, text, generation budget): a finished key is never sent again."""
        text = self.prompt if api == "completions" else self.user
        blob = json.dumps([api, text, self.max_tokens, self.answers], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)
