"""A byte-level tokenizer for `model=tiny`: one token per byte plus four specials, a real Hugging Face
tokenizer (saved with the export, loaded by `AutoTokenizer.from_pretrained`), with a chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
PAD = "<|pad|>"
VOCAB_SIZE = 256 + len(SPECIALS) + 1

CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Bytes are ids 0-255 (in byte order), the specials and the pad token follow."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()  # ByteLevel's printable stand-in for each byte
    vocab = {table[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[3],
                                   pad_token=PAD, additional_special_tokens=SPECIALS[1:3])
    fast.chat_template = CHAT_TEMPLATE
    return fast
