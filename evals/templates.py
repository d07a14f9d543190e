"""RULER's prompts: the task templates and answer prefixes of NVIDIA/RULER `scripts/data/synthetic/constants.py`,
its needle and noise sentences, the generation limits (`tokens_to_generate`) and the 13 tasks of
`scripts/synthetic.yaml` with their arguments (plus the generator scripts' defaults they rely on).

A template holds the task text (what goes in the user turn); its answer prefix follows the generation prompt.
"""

from __future__ import annotations

# niah. Template fields: {type_needle_v} ("numbers", "uuids"), {context} (haystack with needles), {query} (the
# asked key(s)); prefix: {type_needle_v}, {query}. Rewritten to the singular by `niah_templates`.
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
                 "{type_needle_v} for {query} mentioned in the provided text?")
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
# Fields: {type_needle_v} (always the plural, as niah.py writes it), {key}, {value}.
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
# RULER's "noise" haystack unit (niah, vt).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# vt. Template: {context} (noise with the chains' statements), {query} (the chain's value); prefix: {num_v}
# (variables per chain: hops + 1), {query}.
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                    "are assigned the value {query}, they are: ")

# cwe. Template: {context} (the numbered word list). No prefix fields.
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

# fwe. Template: {context} (the coded words). No prefix fields.
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"

# qa. Template: {context} (documents joined by a blank line), {query} (the question). No prefix fields.
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
               "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
               "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_ANSWER_PREFIX = " Answer:"
# Fields: {i} (1-based position), {document}.
QA_DOCUMENT = "Document {i}:\n{document}"

# RULER's tokens_to_generate, by task family (a task's name starts with its family).
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}

# niah.py's rewriting, in its order, of a template asking for one value.
SINGULAR = (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer"))


def _niah(haystack: str, keys: str, values: str, num_k: int = 1, num_v: int = 1, num_q: int = 1) -> tuple[str, dict]:
    return "niah", {"type_haystack": haystack, "type_needle_k": keys, "type_needle_v": values,
                    "num_needle_k": num_k, "num_needle_v": num_v, "num_needle_q": num_q}


# synthetic.yaml: task -> (family, args). Script defaults made explicit: vt's in-context example (fitted to 500
# tokens), cwe's one in-context example, fwe's 6-letter coded words (its vocabulary: (length - 50) // 50 words).
TASK_CONFIGS: dict[str, tuple[str, dict]] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", num_k=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", num_v=4),
    "niah_multiquery": _niah("essay", "words", "numbers", num_q=4),
    "vt": ("vt", {"type_haystack": "noise", "num_chains": 1, "num_hops": 4, "icl_tokens": 500}),
    "cwe": ("cwe", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10, "num_fewshot": 1}),
    "fwe": ("fwe", {"alpha": 2.0, "coded_wordlen": 6}),
    "qa_1": ("qa", {"dataset": "squad"}),
    "qa_2": ("qa", {"dataset": "hotpotqa"}),
}


def niah_templates(type_needle_v: str, num_needle_v: int, num_needle_q: int) -> tuple[str, str]:
    """niah's template and answer prefix with {type_needle_v} filled ({context} and {query} left); rewritten to
    the singular ("A special magic number is ...") when one value is asked for (num_needle_q * num_needle_v == 1)."""
    template, prefix = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX
    if num_needle_q * num_needle_v == 1:
        for old, new in SINGULAR:
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        type_needle_v = type_needle_v[:-1]
    return template.replace("{type_needle_v}", type_needle_v), prefix.replace("{type_needle_v}", type_needle_v)
