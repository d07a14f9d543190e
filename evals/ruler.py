"""RULER's 13 synthetic tasks (NVIDIA/RULER `scripts/data/synthetic`), generated in the target's tokens.

A sample is drawn as RULER draws it (needles, variable chains, word lists, coded words or documents, from a
generator seeded per task, length and index) around a haystack of `n` units: noise sentences, distractor
needles, essay words, listed words, coded-word counts or documents. RULER binary-searches one `n` per cell so that
the prompt plus `tokens_to_generate` fits `max_seq_length`, then lowers it per sample where needed; here `n` is
fitted per sample (`prompting.fit`, from the previous sample's `n`) to the largest count, within 0.5%, whose
rendered prompt plus `max_tokens` fits `length`.

Deliberate differences: the essay haystack is the caller's text (RULER's Paul Graham essays are not shipped),
cut into sentences by a regex (RULER: nltk's punkt); cwe beyond the word lists adds adjective-noun pairs to them
(RULER: draws from its english_words.json); the in-context examples of vt and cwe are plain text in the user
turn (RULER's base template), vt's drawn per sample on a noise haystack sized once per cell to RULER's 500 tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from agents.errors import InputError
from evals import templates as T
from evals.prompting import PromptFormat, fit
from evals.samples import EvalSample
from evals.words import draw, word_lists

TASKS = tuple(T.TASK_CONFIGS)
FIT_TOLERANCE = 0.005
_PROBE = 32  # units between the two prompts whose token counts give the first sample's starting guess
_DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)): RULER's needle depths (%)
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")

# UTF-8 bytes one haystack unit adds, a bound on its tokens in any tokenizer (a token holds at least a byte): a noise
# sentence (90), an essay word (20), a distractor needle (words->numbers 90, uuids 115), three cwe list entries,
# about one coded word (fwe), a typical SQuAD paragraph (800) or HotpotQA paragraph with its title (600). A fitted
# sample lands less than one unit below its length; documents are large and vary, so QA lands the farthest.
UNIT_BYTES = {"niah_single_1": 90, "niah_single_2": 20, "niah_single_3": 20, "niah_multikey_1": 20,
              "niah_multikey_2": 90, "niah_multikey_3": 115, "niah_multivalue": 20, "niah_multiquery": 20,
              "vt": 90, "cwe": 100, "fwe": 40, "qa_1": 800, "qa_2": 600}

Make = Callable[[int], tuple[str, list[str]]]  # haystack units -> (user text, answers)
Spec = tuple[Make, str, int]  # (make, answer prefix, fewest units)


def recommended_tolerance(task: str, length: int = 4096) -> float:
    """How far below `length` (a fraction) a fitted sample may land: one haystack unit over the length, at least
    1% (units: a noise sentence, an essay word, a distractor needle, three list entries, a document)."""
    return max(0.01, UNIT_BYTES[task] / length)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "big")


def generate(task: str, fmt: PromptFormat, length: int, num_samples: int, seed: int = 42, essay: str = "",
             qa_path: str | None = None) -> list[EvalSample]:
    """`num_samples` samples of a RULER task, each prompt plus the task's generation budget within `length`
    tokens. `essay`: the text of the essay haystack (niah); `qa_path`: SQuAD (qa_1) or HotpotQA (qa_2) json."""
    if task not in T.TASK_CONFIGS:
        raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(TASKS)}")
    family, args = T.TASK_CONFIGS[task]
    max_tokens = T.TOKENS_TO_GENERATE[family]
    budget = length - max_tokens
    if family == "niah":
        spec = _niah(args, essay, length)
    elif family == "vt":
        spec = _vt(args, fmt, random.Random(_seed(seed, task, length)))
    elif family == "cwe":
        spec = _cwe(args, length)
    elif family == "fwe":
        spec = _fwe(args, length)
    else:
        spec = _qa(args, task, qa_path)
    samples: list[EvalSample] = []
    for index in range(num_samples):
        make, prefix, lo = spec(random.Random(_seed(seed, task, length, index)), index)
        guess = samples[-1].meta["units"] if samples else None
        n, prompt, tokens = _fit(_renderer(fmt, make, prefix), fmt.count, budget, lo, guess)
        user, answers = make(n)
        samples.append(EvalSample(task=task, length=length, index=index, user=user, answer_prefix=prefix,
                                  answers=answers, max_tokens=max_tokens, metric="part" if family == "qa" else "all",
                                  prompt=prompt, n_tokens=tokens + max_tokens, meta={"units": n}))
    return samples


def _renderer(fmt: PromptFormat, make: Make, prefix: str) -> Callable[[int], str]:
    return lambda n: fmt.render(make(n)[0], prefix)


def _fit(build: Callable[[int], str], count: Callable[[str], int], budget: int, lo: int,
         guess: int | None) -> tuple[int, str, int]:
    """`prompting.fit` from `guess`, or from the slope between `lo` and `lo + _PROBE` units when there is none."""
    if guess is None:
        c0, c1 = count(build(lo)), count(build(lo + _PROBE))
        guess = lo + (budget - c0) * _PROBE // max(c1 - c0, 1)
    return fit(build, count, budget, guess=max(lo, guess), lo=lo, tolerance=FIT_TOLERANCE)


def _rewinding(rng: random.Random, make: Make) -> Make:
    """`make` run from the generator's current state every time: the same units give the same text."""
    state = rng.getstate()

    def again(n: int) -> tuple[str, list[str]]:
        rng.setstate(state)
        return make(n)
    return again


# niah -------------------------------------------------------------------------------------------------------

def _essay_words(essay: str, limit: int) -> list[str]:
    """The essay's first `limit` whitespace-separated words (a word is at least one token)."""
    words = [m.group() for _, m in zip(range(limit), re.finditer(r"\S+", essay))]
    if not words:
        raise InputError("the essay haystack of niah_single_2/3, niah_multikey_1, niah_multivalue and "
                         "niah_multiquery is empty: pass the corpus text as `essay` (set corpus=python_docs)")
    return words


def _in_sentences(text: str, needles: list[str], rng: random.Random) -> str:
    """RULER's essay insertion: needles at random distinct depths, each at the start of a sentence."""
    sentences = _SENTENCE_END.split(text) if text else []
    cuts = [0, *sorted(len(sentences) * d // 100 for d in rng.sample(_DEPTHS, len(needles))), len(sentences)]
    parts = []
    for i, needle in enumerate(needles):
        parts += [" ".join(sentences[cuts[i]:cuts[i + 1]]), needle]
    return " ".join([*parts, " ".join(sentences[cuts[-2]:])])


def _niah(args: dict, essay: str, length: int) -> Callable[[random.Random, int], Spec]:
    kind, type_k, type_v = args["type_haystack"], args["type_needle_k"], args["type_needle_v"]
    num_k, num_q = max(args["num_needle_k"], args["num_needle_q"]), args["num_needle_q"]
    template, prefix = T.niah_templates(type_v, args["num_needle_v"], num_q)
    words = _essay_words(essay, length) if kind == "essay" else []

    def needle(key: str, value: str) -> str:
        return T.NIAH_NEEDLE.format(type_needle_v=type_v, key=key, value=value)

    def spec(rng: random.Random, index: int) -> Spec:
        keys = [draw(type_k, rng) for _ in range(num_k)]
        values = [[draw(type_v, rng) for _ in range(args["num_needle_v"])] for _ in keys]
        needles = [needle(k, v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        asked = rng.sample(range(num_k), num_q)
        queries = [keys[i] for i in asked]
        query = f"{', '.join(queries[:-1])}, and {queries[-1]}" if num_q > 1 else queries[0]
        answers = [v for i in asked for v in values[i]]

        def make(n: int) -> tuple[str, list[str]]:
            if kind == "essay":
                context = _in_sentences(" ".join(words[i % len(words)] for i in range(n)), needles, rng)
            else:
                units = [T.NOISE] * n if kind == "noise" else [needle(draw(type_k, rng), draw(type_v, rng))
                                                                for _ in range(n)]
                for at, text in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
                    units.insert(at, text)
                context = "\n".join(units)
            return template.format(context=context, query=query), answers
        return _rewinding(rng, make), prefix.format(query=query), 0 if kind == "essay" else len(needles)
    return spec


# vt ---------------------------------------------------------------------------------------------------------

class _Chain(NamedTuple):
    names: list[str]
    statements: list[str]  # "VAR A = 12345", then "VAR B = VAR A " per hop (the trailing space is RULER's)


def _chains(rng: random.Random, num_chains: int, hops: int, letters: int, value: str | None = None) -> list[_Chain]:
    """Chains of `hops` copies from a value (each its own unless given), their variable names all distinct."""
    names: list[str] = []
    while len(names) < num_chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    groups = [names[i:i + hops + 1] for i in range(0, len(names), hops + 1)]
    return [_Chain(g, [f"VAR {g[0]} = {value or rng.randint(10000, 99998)}"] +
                   [f"VAR {g[j + 1]} = VAR {g[j]} " for j in range(hops)]) for g in groups]


def _value(chains: list[_Chain]) -> str:
    return chains[0].statements[0].split("=")[-1].strip()


def _vt_text(rng: random.Random, n: int, chains: list[_Chain]) -> str:
    """The task text: `n` noise sentences with each chain's statements inserted in order at random places."""
    sentences = [T.NOISE] * n
    for chain in chains:
        for j, at in enumerate(sorted(rng.sample(range(len(sentences)), len(chain.statements)))):
            sentences.insert(at + j, chain.statements[j])
    return T.VT_TEMPLATE.format(context="\n".join(sentences).replace(". \n", ".\n"), query=_value(chains))


def _vt(args: dict, fmt: PromptFormat, icl_rng: random.Random) -> Callable[[random.Random, int], Spec]:
    num_chains, hops = args["num_chains"], args["num_hops"]
    icl_hops = min(10, hops)

    def example(rng: random.Random, n: int) -> tuple[str, list[str]]:
        """RULER's in-context example (3-letter names, one value for all chains) up to its answer prefix."""
        chains = _chains(rng, num_chains, icl_hops, 3, str(rng.randint(10000, 99998)))
        return _vt_text(rng, n, chains) + T.VT_ANSWER_PREFIX.format(num_v=icl_hops + 1, query=_value(chains)), \
            chains[0].names

    # the example's noise sentences, once per cell: as many as keep it (without its answer) within 500 tokens
    icl = _rewinding(icl_rng, functools.partial(example, icl_rng))
    icl_lo = num_chains * (icl_hops + 1)
    try:
        icl_n = _fit(lambda n: icl(n)[0], fmt.count_training, args["icl_tokens"], icl_lo, None)[0]
    except InputError:  # the fewest sentences already exceed 500 tokens (a byte-level tokenizer): RULER hangs here
        icl_n = icl_lo

    def spec(rng: random.Random, index: int) -> Spec:
        text, names = example(rng, icl_n)
        shot = f"{text} {' '.join(names)}\n"
        chains = _chains(rng, num_chains, hops, 5)
        make = _rewinding(rng, lambda n: (shot + "\n" + _vt_text(rng, n, chains), chains[0].names))
        return make, T.VT_ANSWER_PREFIX.format(num_v=hops + 1, query=_value(chains)), num_chains * (hops + 1)
    return spec


# cwe --------------------------------------------------------------------------------------------------------

@functools.cache
def _cwe_vocabularies() -> tuple[list[str], list[str], list[str]]:
    """RULER's cwe words (wonderwords' nouns, adjectives and verbs), and the lowercase one-word adjectives and
    nouns whose 6M pairs ("brave-otter") stand in for RULER's english_words.json."""
    lists = word_lists()
    simple = [[w for w in lists[k] if w.isalpha() and w.islower()] for k in ("adjective", "noun")]
    return sorted({*lists["noun"], *lists["adjective"], *lists["verb"]}), *simple


def _word_list(rng: random.Random, num_words: int, freq_cw: int, freq_ucw: int, num_cw: int) -> tuple[str, list[str]]:
    """RULER's numbered list: `num_cw` common words `freq_cw` times each, the rest `freq_ucw` times, shuffled.
    Needing more distinct words than the lists hold, it takes them all and adds adjective-noun pairs (RULER
    switches to its english_words.json; adding keeps the prompt's tokens growing smoothly with the words)."""
    words, adjectives, nouns = _cwe_vocabularies()
    if num_words <= len(words):
        picked = rng.sample(words, num_words)
    else:
        more, taken = num_words - len(words), set(words)
        drawn = rng.sample(range(len(adjectives) * len(nouns)), more + sum("-" in w for w in words))
        pairs = (f"{adjectives[i // len(nouns)]}-{nouns[i % len(nouns)]}" for i in drawn)
        picked = words + [w for w in pairs if w not in taken][:more]  # a pair may spell a hyphenated list word
        rng.shuffle(picked)
    entries = picked[:num_cw] * freq_cw + picked[num_cw:] * freq_ucw
    rng.shuffle(entries)
    return " ".join(f"{i}. {w}" for i, w in enumerate(entries, 1)), picked[:num_cw]


def _cwe(args: dict, length: int) -> Callable[[random.Random, int], Spec]:
    num_cw = args["num_cw"]
    # RULER below 4096 tokens: 6 and 1 repeats, examples of 20 words (3 and 1); else 40 words (10 and 3).
    freq = (6, 1) if length < 4096 else (args["freq_cw"], args["freq_ucw"])
    shot_words, *shot_freq = (20, 3, 1) if length < 4096 else (40, 10, 3)

    def spec(rng: random.Random, index: int) -> Spec:
        shots = []
        for _ in range(args["num_fewshot"]):
            context, common = _word_list(rng, shot_words, *shot_freq, num_cw)
            answer = " ".join(f"{i}. {w}" for i, w in enumerate(common, 1))
            shots.append(f"{T.CWE_TEMPLATE.format(context=context)}{T.CWE_ANSWER_PREFIX} {answer}")

        def make(n: int) -> tuple[str, list[str]]:
            context, common = _word_list(rng, n, *freq, num_cw)
            return "\n".join([*shots, T.CWE_TEMPLATE.format(context=context)]), common
        return _rewinding(rng, make), T.CWE_ANSWER_PREFIX, num_cw
    return spec


# fwe --------------------------------------------------------------------------------------------------------

def _zeta(s: float, terms: int = 1000) -> float:
    """Riemann zeta(s) for s > 1 (RULER: scipy.special.zeta): a partial sum and its Euler-Maclaurin tail."""
    tail = terms ** (1 - s) / (s - 1) + terms ** -s / 2 + s * terms ** (-s - 1) / 12
    return sum(k ** -s for k in range(1, terms)) + tail


def _fwe(args: dict, length: int) -> Callable[[random.Random, int], Spec]:
    alpha, letters = args["alpha"], args["coded_wordlen"]
    vocab_size = (length - T.TOKENS_TO_GENERATE["fwe"]) // 50
    if vocab_size < 5:
        raise InputError(f"fwe needs a length of at least 300 tokens (its vocabulary is length // 50), not {length}")
    zeta = _zeta(alpha)

    def spec(rng: random.Random, index: int) -> Spec:
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=letters)))
        ranked = sorted(vocab)
        rng.shuffle(ranked)
        ranked[0] = "..."  # the most frequent "word" is noise

        def make(n: int) -> tuple[str, list[str]]:
            # Zipf counts: word k appears int(n * k^-alpha / zeta(alpha)) times
            words = [w for k, w in enumerate(ranked, 1) for _ in range(int(n * k ** -alpha / zeta))]
            rng.shuffle(words)
            return T.FWE_TEMPLATE.format(context=" ".join(words)), ranked[1:4]
        # from 100 units on (alpha 2), the 4th and 5th ranks differ in count: the top three are unambiguous
        return _rewinding(rng, make), T.FWE_ANSWER_PREFIX, 100
    return spec


# qa ---------------------------------------------------------------------------------------------------------

def _bad_file(path: str | Path, why: str) -> InputError:
    return InputError(f"QA file {path} {why}: point task.qa_files at a local SQuAD v2 dev json (qa_1) or HotpotQA "
                      f"dev distractor json (qa_2), or set it to null to skip the task")


@functools.lru_cache(maxsize=4)
def _read_qa(path: str, mtime_ns: int) -> tuple[str, list[dict], list[str]]:
    """(format, questions, documents) as RULER's read_squad / read_hotpotqa make them; cached per file version."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad_file(path, f"is not readable json ({e})") from None
    try:
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
            index = {c: i for i, c in enumerate(docs)}
            qas = []
            for d in data["data"]:
                article = [index[p["context"]] for p in d["paragraphs"]]
                for p in d["paragraphs"]:
                    gold = index[p["context"]]
                    qas += [{"query": q["question"], "answers": [a["text"] for a in q["answers"]], "gold": [gold],
                             "more": [i for i in article if i != gold]}
                            for q in p["qas"] if not q.get("is_impossible", False)]
            return "squad", qas, docs
        if isinstance(data, list) and data and isinstance(data[0], dict) and "context" in data[0]:
            docs = sorted({f"{t}\n{''.join(s)}" for d in data for t, s in d["context"]})
            index = {c: i for i, c in enumerate(docs)}
            return "hotpotqa", [{"query": d["question"], "answers": [d["answer"]], "more": [],
                                 "gold": [index[f"{t}\n{''.join(s)}"] for t, s in d["context"]]} for d in data], docs
    except (KeyError, TypeError, ValueError) as e:
        raise _bad_file(path, f"has a malformed record ({type(e).__name__}: {e})") from None
    raise _bad_file(path, "is neither SQuAD json ({'data': [{'paragraphs': ...}]}) nor HotpotQA json (a list of "
                          "{'question', 'answer', 'context'})")


def _qa_file(path: str | None) -> tuple[str, list[dict], list[str]]:
    if not path:
        raise InputError("qa_1 and qa_2 need a QA file: set task.qa_files.qa_1 (SQuAD v2 dev json) or "
                         "task.qa_files.qa_2 (HotpotQA dev distractor json), or leave the task out")
    p = Path(path).expanduser()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        raise _bad_file(p, "does not exist") from None
    return _read_qa(str(p), mtime)


def qa_format(path: str) -> str:
    """The format of a QA json: "squad" or "hotpotqa"; InputError, naming the file, when it is neither."""
    return _qa_file(path)[0]


def _qa(args: dict, task: str, path: str | None) -> Callable[[random.Random, int], Spec]:
    kind, qas, docs = _qa_file(path)
    if kind != args["dataset"]:
        raise _bad_file(path, f"is {kind} json, but {task} reads {args['dataset']}")
    if not qas:
        raise _bad_file(path, "holds no answerable question")

    def spec(rng: random.Random, index: int) -> Spec:
        qa = qas[index % len(qas)]  # RULER takes the questions in file order
        gold, more = qa["gold"], qa["more"]
        taken = {*gold, *more}
        others = [i for i in range(len(docs)) if i not in taken]

        def make(n: int) -> tuple[str, list[str]]:
            if n >= len(docs):
                chosen = [docs[i % len(docs)] for i in range(n)]
            elif n - len(gold) > len(more):  # the article's other paragraphs first, then any others
                chosen = [docs[i] for i in gold + more + rng.sample(others, n - len(gold) - len(more))]
            else:
                chosen = [docs[i] for i in gold + rng.sample(more, n - len(gold))]
            rng.shuffle(chosen)
            context = "\n\n".join(T.QA_DOCUMENT.format(i=i, document=d) for i, d in enumerate(chosen, 1))
            return T.QA_TEMPLATE.format(context=context, query=qa["query"]), qa["answers"]
        return _rewinding(rng, make), T.QA_ANSWER_PREFIX, len(gold)
    return spec
