"""Every prompt's fields are exactly what its caller fills."""

import string

from agents import prompts

FIELDS = {
    "INSTRUCTION_PROMPT": {"random_chunk"},
    "QFS_PROMPT": {"instruction", "text", "nothing"},
    "ANSWER_PROMPT": {"notes", "instruction"},
    "BACKTRANSLATION_PROMPT": {"document"},
    "ACER_PROMPT": {"passages", "question"},
    "REASK_PROMPT": {"error"},
    "SYSTEM_PROMPT": set(),
}


def test_prompt_fields_are_the_documented_ones():
    names = {n for n in dir(prompts) if n.endswith("_PROMPT")}
    assert names == set(FIELDS)
    for name, expected in FIELDS.items():
        template = getattr(prompts, name)
        found = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        assert found == expected, name
        filled = template.format(**{f: "X" for f in expected})
        assert "{" not in filled.replace('{"', "").replace("{{", "") or "JSON" in template
