"""Token counts in the *target* model's tokenizer and chat template — what training will see."""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer

from agents.errors import InputError

log = logging.getLogger(__name__)

# Used when the tokenizer carries no chat template of its own (Llama-3's layout).
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


class ChatTokenCounter:
    """Counts, splits and cuts text in a Hugging Face tokenizer loaded from a local folder."""

    def __init__(self, tokenizer: str | None = None, chat_template: str | None = None) -> None:
        from transformers import AutoTokenizer

        if tokenizer is None:
            from agents.embedder import minilm_path

            log.warning(
                "synth.tokenizer is not set: counting tokens with the bundled MiniLM tokenizer; set it "
                "to your target model's local folder so sample lengths are in its tokens"
            )
            tokenizer = str(minilm_path())
        path = Path(tokenizer).expanduser()
        if not path.exists():
            raise InputError(f"tokenizer folder {path} does not exist: set synth.tokenizer to a local model folder")
        self.name = path.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.chat_template = chat_template or getattr(self.tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        # the Rust tokenizer itself, without truncation: counting skips the Python wrapper's overhead
        self._fast = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._fast.no_truncation()
        self._fast.no_padding()

    def _encode(self, text: str):
        # encode_batch releases the GIL, so tokenization in worker threads runs in parallel
        return self._fast.encode_batch([text], add_special_tokens=False)[0]

    def _ids(self, text: str) -> list[int]:
        return self._encode(text).ids

    def count(self, text: str) -> int:
        """Tokens in a plain text."""
        return len(self._ids(text))

    def render(self, messages: list[dict[str, str]]) -> str:
        """The messages as the chat template lays them out."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.chat_template)

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        """Tokens of a whole conversation, chat template included."""
        return self.count(self.render(messages))

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self._encode(text).offsets

    def truncate(self, text: str, n_tokens: int) -> str:
        """The longest prefix of `text` holding at most `n_tokens` tokens."""
        if n_tokens <= 0:
            return ""
        offsets = self._offsets(text)
        return text if len(offsets) <= n_tokens else text[: offsets[n_tokens][0]]

    def split(self, text: str, n_tokens: int) -> list[str]:
        """Consecutive pieces of at most `n_tokens` tokens that together are `text`."""
        offsets = self._offsets(text)
        if len(offsets) <= n_tokens:
            return [text] if text else []
        cuts = [0] + [offsets[i][0] for i in range(n_tokens, len(offsets), n_tokens)] + [len(text)]
        return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
