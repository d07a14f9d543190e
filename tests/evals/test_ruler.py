"""RULER's 13 tasks: deterministic, fitted to their lengths, solvable from their text, worded as RULER words them."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from agents.errors import InputError
from evals import ruler, templates
from evals.haystack import passkey_haystack
from evals.prompting import PromptFormat
from evals.scoring import score
from tests.evals.qa_data import QA_ANSWERS, write_qa_files
from tests.evals.solvers import solve

# The tiny tokenizer spends ~8 tokens on a cwe list entry: RULER's in-context example alone outgrows 1024 tokens
# (below 4096: 20 words) and 4096 (from 4096 on: 40 words, 190 entries), so cwe is checked on each side of 4096.
LENGTHS = {task: (2048, 8192) if task == "cwe" else (1024, 4096) for task in ruler.TASKS}
MAX_TOKENS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}

@pytest.fixture(scope="module")
def fmt(tiny_tokenizer) -> PromptFormat:
    return PromptFormat.from_folder(tiny_tokenizer)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory) -> dict[str, str]:
    return write_qa_files(tmp_path_factory.mktemp("qa"))


@pytest.fixture(scope="module")
def make(fmt, qa_files):
    """`generate` with the test's essay and QA files, each cell generated once for the module."""
    essay = passkey_haystack("eval")
    cache: dict[tuple, list] = {}

    def make(task: str, length: int, seed: int = 42, num_samples: int = 3, fresh: bool = False):
        key = (task, length, seed, num_samples)
        if fresh or key not in cache:
            cache[key] = ruler.generate(task, fmt, length, num_samples, seed=seed, essay=essay,
                                        qa_path=qa_files.get(task))
        return cache[key]
    return make


@pytest.mark.parametrize("task", ruler.TASKS)
def test_generation_is_deterministic(make, task):
    length = LENGTHS[task][0]
    first = [s.to_dict() for s in make(task, length)]
    assert [s.to_dict() for s in make(task, length, fresh=True)] == first
    assert [s.to_dict() for s in make(task, length, num_samples=2)] == first[:2]  # a cell grows, never changes
    assert [s.user for s in make(task, length, seed=43)] != [s["user"] for s in first]
    assert len({s["user"] for s in first}) == len(first)


@pytest.mark.parametrize("task", ruler.TASKS)
@pytest.mark.parametrize("which", [0, 1])
def test_samples_fit_their_length_and_are_solvable(make, fmt, task, which):
    length = LENGTHS[task][which]
    family = next(f for f in MAX_TOKENS if task.startswith(f))
    tolerance = ruler.recommended_tolerance(task, length)
    for i, s in enumerate(make(task, length)):
        assert (s.task, s.length, s.index, s.depth) == (task, length, i, None)
        assert (s.max_tokens, s.metric) == (MAX_TOKENS[family], "part" if family == "qa" else "all")
        assert s.prompt == fmt.render(s.user, s.answer_prefix)
        assert s.n_tokens == fmt.count(s.prompt) + s.max_tokens
        assert length * (1 - tolerance) <= s.n_tokens <= length, (s.n_tokens, length, tolerance)
        if family in ("niah", "vt", "qa"):
            assert all(a in s.user for a in s.answers)
        for text in (s.user, s.prompt):
            assert score(solve(task, text, QA_ANSWERS), s.answers, s.metric) == 1.0
        assert score("nothing", s.answers, s.metric) < 1.0


@pytest.mark.parametrize("length", LENGTHS["cwe"])
def test_cwe_lists_repeat_words_as_ruler_does(make, length):
    common, uncommon = (6, 1) if length < 4096 else (30, 3)
    for s in make("cwe", length):
        listing = s.user[s.user.rindex("Below is a numbered list"):].split("\n")[1]
        entries = re.split(r"(?:^| )\d+\. ", listing)[1:]
        assert len(entries) == 10 * common + (s.meta["units"] - 10) * uncommon
        counts = Counter(entries)
        assert [counts[w] for w in s.answers] == [common] * 10
        assert max(c for w, c in counts.items() if w not in s.answers) == uncommon
        assert s.user.count("Question: What are the 10 most common words in the above list?") == 2  # + example


def test_fwe_counts_follow_zipf(make):
    zeta2 = 1.6449340668482264
    for s in make("fwe", 4096):
        n = s.meta["units"]
        counts = Counter(s.user.split("coded words. ")[1].split("\nQuestion:")[0].split())
        assert counts["..."] == int(n / zeta2)
        assert [counts[w] for w in s.answers] == [int(n * k ** -2 / zeta2) for k in (2, 3, 4)]
        assert all(len(w) == 6 for w in counts if w != "...")


def test_niah_wording_is_rulers(make):
    single = make("niah_single_1", 1024)[0]
    key = re.search(r"What is the special magic number for (.+?) mentioned", single.user).group(1)
    assert single.user.startswith("A special magic number is hidden within the following text. Make sure to "
                                  "memorize it. I will quiz you about the number afterwards.\n")
    assert single.user.endswith(f"\nWhat is the special magic number for {key} mentioned in the provided text?")
    assert single.answer_prefix == f" The special magic number for {key} mentioned in the provided text is"
    assert f"\nOne of the special magic numbers for {key} is: {single.answers[0]}.\n" in single.user
    assert f"\n{templates.NOISE}\n" in single.user
    assert templates.NOISE == ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
                               "again.")
    assert re.fullmatch(r"\d{7}", single.answers[0])

    uuid = make("niah_single_3", 1024)[0]
    assert uuid.user.startswith("A special magic uuid is hidden within the following text. Make sure to memorize "
                                "it. I will quiz you about the uuid afterwards.\n")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid.answers[0])

    multi = make("niah_multivalue", 1024)[0]
    key = re.search(r"What are all the special magic numbers for (.+?) mentioned", multi.user).group(1)
    assert multi.user.startswith("Some special magic numbers are hidden within the following text. Make sure to "
                                 "memorize it. I will quiz you about the numbers afterwards.\n")
    assert multi.answer_prefix == f" The special magic numbers for {key} mentioned in the provided text are"
    assert len(multi.answers) == 4 and all(f"for {key} is: {v}." in multi.user for v in multi.answers)

    query = make("niah_multiquery", 1024)[0]
    assert re.search(r"for \S+, \S+, \S+, and \S+ mentioned in the provided text\?$", query.user)
    assert len(query.answers) == 4
    assert make("niah_multikey_1", 1024)[0].user.count("One of the special magic numbers for ") == 4


def test_other_wordings_are_rulers(make):
    vt = make("vt", 1024)[0]
    value = re.findall(r"assigned the value (\d+) in the text above\.$", vt.user)[0]
    assert vt.answer_prefix == (" Answer: According to the chain(s) of variable assignment in the text above, 5 "
                                f"variables are assigned the value {value}, they are: ")
    assert vt.user.startswith("Memorize and track the chain(s) of variable assignment hidden in the following "
                              "text.\n\nVAR ")
    assert vt.user.count("Memorize and track the chain(s)") == 2  # the in-context example, then the task
    assert f"\nVAR {vt.answers[0]} = {value}\n" in vt.user and all(len(v) == 5 for v in vt.answers)
    assert f"\nVAR {vt.answers[1]} = VAR {vt.answers[0]} \n" in vt.user

    cwe = make("cwe", 2048)[0]
    assert cwe.answer_prefix == " Answer: The top 10 words that appear most often in the list are:"
    assert cwe.user.endswith("\nQuestion: What are the 10 most common words in the above list?")
    assert "list? Answer: The top 10 words that appear most often in the list are: 1. " in cwe.user  # the example

    fwe = make("fwe", 1024)[0]
    assert fwe.answer_prefix == (" Answer: According to the coded text above, the three most frequently appeared "
                                 "words are:")
    assert fwe.user.startswith("Read the following coded text and track the frequency of each coded word. Find the "
                               "three most frequently appeared coded words. ")
    assert fwe.user.endswith("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are "
                             "the three most frequently appeared words in the above coded text?")

    instruction = ("Answer the question based on the given documents. Only give me the answer and do not output any "
                   "other words.")
    for task in ("qa_1", "qa_2"):
        for i, s in enumerate(make(task, 1024)):
            question = list(QA_ANSWERS)[i]  # RULER takes the questions in file order
            assert s.answer_prefix == " Answer:"
            assert s.user.startswith(f"{instruction}\n\nThe following are given documents.\n\nDocument 1:\n")
            assert s.user.endswith(f"\n\n{instruction}\n\nQuestion: {question}")
            assert s.answers == [QA_ANSWERS[question]]
            assert re.findall(r"\n\nDocument (\d+):\n", s.user) == [str(k) for k in range(1, s.meta["units"] + 1)]


def test_qa_files_are_read_and_refused_by_name(fmt, qa_files, tmp_path):
    assert ruler.qa_format(qa_files["qa_1"]) == "squad"
    assert ruler.qa_format(qa_files["qa_2"]) == "hotpotqa"
    missing = tmp_path / "nowhere" / "squad.json"
    with pytest.raises(InputError, match=re.escape(str(missing))):
        ruler.generate("qa_1", fmt, 4096, 1, qa_path=str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match=re.escape(str(broken))):
        ruler.qa_format(str(broken))
    with pytest.raises(InputError, match="qa_files"):
        ruler.generate("qa_2", fmt, 4096, 1)
    with pytest.raises(InputError, match="hotpotqa json, but qa_1 reads squad"):
        ruler.generate("qa_1", fmt, 4096, 1, qa_path=qa_files["qa_2"])


def test_unknown_task_and_impossible_lengths(fmt):
    with pytest.raises(ValueError, match="unknown RULER task 'niah_single_9'"):
        ruler.generate("niah_single_9", fmt, 4096, 1)
    with pytest.raises(InputError, match="essay"):
        ruler.generate("niah_single_2", fmt, 4096, 1, essay="  ")
    with pytest.raises(InputError, match="longer length"):
        ruler.generate("niah_single_1", fmt, 200, 1)


def test_tolerance_is_one_unit_of_haystack():
    assert ruler.recommended_tolerance("niah_single_2") == 0.01  # essay words
    assert ruler.recommended_tolerance("niah_single_1", 1024) > ruler.recommended_tolerance("niah_single_1", 4096)
    assert ruler.recommended_tolerance("qa_1", 4096) > ruler.recommended_tolerance("niah_multikey_2", 4096)
    assert set(ruler.UNIT_BYTES) == set(ruler.TASKS) and len(ruler.TASKS) == 13
