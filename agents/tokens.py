"""Token counts in the *target* model's tokenizer and chat template — what training will see."""

from __future__ import annotations

import functools
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
        self.tokens_encoded = 0  # tokens produced by every encode so far (what the overhead benchmark reports)
        self._chars_seen = 4  # characters of those encodes (4 per token before the first)

    def _encode(self, text: str):
        # encode_batch releases the GIL, so tokenization in worker threads runs in parallel
        encoding = self._fast.encode_batch([text], add_special_tokens=False)[0]
        self.tokens_encoded += len(encoding)
        self._chars_seen += len(text)
        return encoding

    def count(self, text: str) -> int:
        """Tokens in a plain text."""
        return len(self._encode(text))  # no list of ids built: the length of the Rust encoding

    def render(self, messages: list[dict[str, str]]) -> str:
        """The messages as the chat template lays them out."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.chat_template)

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        """Tokens of a whole conversation, chat template included."""
        return self.count(self.render(messages))

    @functools.cached_property
    def join_slack(self) -> int:
        """Tokens that joining a document into a conversation may cost beyond its parts (its header, its text and a
        blank line counted apart): byte-level BPE splits a blank line before a word differently than alone. Measured
        once on a probe, at least 0."""
        parts = ["a closing sentence.", "\n\n", "Document 2: Title\n", "An opening sentence"]
        return max(0, self.count("".join(parts)) - sum(self.count(p) for p in parts))

    def encode(self, text: str, limit: int | None = None):
        """The tokenizer's encoding of `text` (a `tokenizers.Encoding`: `len()` is its tokens, `token_to_chars(i)`
        where token i lies), or of just enough of its prefix to hold `limit` tokens and a margin."""
        if limit is not None:
            # characters per token as seen so far (4 to start: English prose), with a tenth to spare; grown by half
            chars = int(self._chars_seen / max(1, self.tokens_encoded) * 1.1 * (limit + 16)) + 64
            while chars < len(text):
                part = self._encode(text[:chars])
                if len(part) > limit + 16:  # the prefix's last tokens may differ from the full text's: never used
                    return part
                chars += chars // 2
        return self._encode(text)

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self._encode(text).offsets

    def measure(self, text: str, limit: int | None = None, every: int | None = None) -> tuple[int, int, list[int]]:
        """One encode of `text`, three answers: (its tokens, the length in characters of its longest prefix of at
        most `limit` tokens — `len(text)` when it fits or no limit is given, the character offsets where each run of
        `every` tokens after the first begins, up to that prefix's end — [] without `every`). What `count`,
        `truncate` and `split` would give, for the price of one of them.

        With a `limit`, only as much of a long text is encoded as the limit needs (a prefix, grown until it holds
        `limit` tokens and a margin): the count is then exact up to `limit`, and above it only known to exceed it.
        """
        return self.points(self.encode(text, limit), len(text), limit, every)

    @staticmethod
    def points(encoding, length: int, limit: int | None = None, every: int | None = None) -> tuple[int, int, list[int]]:
        """`measure`'s answers from an encoding already made (`encode`) of a text of `length` characters."""
        n = len(encoding)  # the offsets of the few tokens needed are read one by one, never all of them as a list
        start = encoding.token_to_chars
        cut = length if limit is None or n <= limit else (start(limit)[0] if limit > 0 else 0)
        starts = [start(i)[0] for i in range(every, min(n, limit if limit is not None else n), every)] if every else []
        return n, cut, starts

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
