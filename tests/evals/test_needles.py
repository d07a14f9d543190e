"""The one needle generator: lengths in the target's tokens, the needle at a sentence boundary at its depth,
the answer recoverable, and the training JSONL that the trainer reads back at the length it was made for."""

import json
import random
import re

import pytest

from evals.haystack import Haystack, insert_at_sentence, passkey_haystack
from evals.needles import NeedleFormat, needle_sample, training_record
from evals.prompting import PromptFormat, fit
from tests.conftest import compose, write_passkey


def _formats() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose("evaluate", ["task=niah"]).task.formats, resolve=True)


@pytest.fixture(scope="module")
def fmts(tiny_tokenizer):
    from lightning_modules.byte_tokenizer import byte_tokenizer

    return {"bytes": PromptFormat(byte_tokenizer()), "bpe": PromptFormat.from_folder(tiny_tokenizer)}


@pytest.mark.parametrize("tok", ["bytes", "bpe"])
@pytest.mark.parametrize("name", ["passkey", "niah_single"])
def test_samples_fill_their_length_within_one_percent_and_hold_the_needle(fmts, tok, name):
    fmt, nf = fmts[tok], NeedleFormat(**_formats()[name])
    hay = Haystack(passkey_haystack("eval"), fmt)
    for length in (512, 2048, 8192):
        for depth in (0.0, 0.25, 0.5, 1.0):
            s = needle_sample(random.Random(length), hay, fmt, nf, name, length, depth, 0)
            assert 0.99 * length <= s.n_tokens <= length, (length, s.n_tokens)
            assert s.n_tokens == fmt.count(s.prompt) + nf.max_tokens
            assert s.prompt == fmt.render(s.user, s.answer_prefix) and s.prompt.endswith(s.answer_prefix)
            value = s.answers[0]
            assert nf.needle.format(key=s.meta["key"], value=value) in s.user
            assert set(re.findall(r"\d+", s.user)) <= {value, *re.findall(r"\d+", s.meta["key"])}


def test_same_seed_same_sample_and_depth_moves_the_needle(fmts):
    fmt, nf = fmts["bpe"], NeedleFormat(**_formats()["passkey"])
    hay = Haystack(passkey_haystack("eval"), fmt)
    a = needle_sample(random.Random(7), hay, fmt, nf, "passkey", 1024, 0.5, 0)
    assert a == needle_sample(random.Random(7), hay, fmt, nf, "passkey", 1024, 0.5, 0)
    assert a != needle_sample(random.Random(8), hay, fmt, nf, "passkey", 1024, 0.5, 0)
    where = []
    for depth in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        s = needle_sample(random.Random(3), hay, fmt, nf, "passkey", 2048, depth, 0)
        where.append(s.user.index("The secret key for") / len(s.user))
    assert where == sorted(where) and where[0] < 0.02 and where[-1] > 0.95


def test_the_needle_lands_on_a_sentence_boundary():
    text = "One two three. Four five six. Seven eight nine. Ten."
    assert insert_at_sentence(text, "NEEDLE.", 0.6) == "One two three. Four five six. NEEDLE. Seven eight nine. Ten."
    assert insert_at_sentence(text, "NEEDLE.", 0.0).startswith("NEEDLE. One")
    assert insert_at_sentence(text, "NEEDLE.", 1.0).endswith("Ten. NEEDLE.")
    # a '.' inside a name is no sentence end, wherever the depth falls
    code = "Use os.path here. Then call collections.abc.Mapping on it."
    for depth in [i / 20 for i in range(21)]:
        placed = insert_at_sentence(code, "NEEDLE.", depth)
        assert "os.path" in placed and "collections.abc.Mapping" in placed, (depth, placed)
    with pytest.raises(ValueError):
        insert_at_sentence(text, "N.", 1.5)


def test_haystack_windows_begin_with_a_whole_sentence(fmts):
    text = " ".join(f"Sentence number {word} says something about the {word} topic." for word in
                    ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth") * 20)
    for fmt in fmts.values():
        hay = Haystack(text, fmt)
        rng = random.Random(0)
        for _ in range(20):
            assert hay.window(hay.random_start(rng), 30).startswith("Sentence number ")


def test_fit_finds_the_largest_count_that_fits():
    for per_unit in (1, 3, 7):
        n, text, tokens = fit(lambda n: "x" * (13 + per_unit * n), len, 1000, guess=5, tolerance=0.0)
        assert tokens <= 1000 < 13 + per_unit * (n + 1)


def test_passkey_haystack_has_no_digit_and_its_splits_do_not_overlap():
    train, held_out = passkey_haystack("train"), passkey_haystack("eval")
    assert not re.search(r"\d", train + held_out) and held_out not in train
    assert train.isascii()


def test_training_jsonl_is_read_back_by_the_trainer_at_the_length_it_was_made_for(tmp_path):
    from lightning_modules.byte_tokenizer import byte_tokenizer
    from lightning_modules.data import read_messages, tokenize_messages

    path = write_passkey(tmp_path / "passkey" / "train_1024.jsonl", 1024, 40)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert not list(tmp_path.rglob("*.partial"))
    tok = byte_tokenizer()
    for record, messages in zip(records, read_messages(str(path))):
        ids, _, response = tokenize_messages(tok, messages, "all", mark_responses=True)
        assert tok.decode(ids[response]).startswith(messages[1]["content"])  # the answer turn is what is marked
        assert len(ids) == record["n_tokens"] and 0.99 * record["target_tokens"] <= len(ids) <= record["target_tokens"]
        assert 256 <= record["target_tokens"] <= 1024
        assert record["provenance"]["programmatic"] is True
        user, answer = messages[0]["content"], messages[1]["content"]
        key = re.findall(r"\d+", user)
        assert key == [record["answer"]] and answer.endswith(record["answer"]) and len(set(key[0])) == 5
    # the eval prompt of the same format is a prefix of the training rendering: same format, exactly
    fmt = PromptFormat(tok)
    rendered = fmt.render_conversation(read_messages(str(path))[0])
    name = re.search(r"secret key for (\w+)\?", rendered)[1]
    assert rendered.startswith(fmt.render(read_messages(str(path))[0][0]["content"], f"The secret key for {name} is"))


def test_training_records_are_seeded(fmts):
    fmt, nf = fmts["bytes"], NeedleFormat(**_formats()["passkey"])
    hay = Haystack(passkey_haystack("train"), fmt)
    assert training_record(random.Random(1), hay, fmt, nf, 700) == training_record(random.Random(1), hay, fmt, nf, 700)
