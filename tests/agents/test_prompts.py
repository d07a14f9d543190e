"""Every prompt's fields are exactly what its caller fills."""

import string

from agents import prompts

FIELDS = {
    "INSTRUCTION_PROMPT": {"random_chunk"},
    "QA_INSTRUCTION_PROMPT": {"random_chunk"},
    "SUMMARY_INSTRUCTION_PROMPT": {"random_chunk"},
    "COMPARISON_INSTRUCTION_PROMPT": {"random_chunk"},
    "AGGREGATION_INSTRUCTION_PROMPT": {"random_chunk"},
    "TIMELINE_INSTRUCTION_PROMPT": {"random_chunk"},
    "QFS_PROMPT": {"instruction", "text", "nothing"},
    "ANSWER_PROMPT": {"notes", "instruction", "citations"},
    "VERIFY_PROMPT": {"notes", "answer"},
    "INSTRUCTION_FIT_PROMPT": {"instruction", "document"},
    "BACKTRANSLATION_PROMPT": {"document"},
    "ACER_PROMPT": {"passages", "question"},
    "REASK_PROMPT": {"error"},
    "SYSTEM_PROMPT": set(),
}


def test_the_citation_rule_fills_one_label():
    found = {f for _, f, _, _ in string.Formatter().parse(prompts.CITE_RULE) if f is not None}
    assert found == {"label"}


def test_prompt_fields_are_the_documented_ones():
    names = {n for n in dir(prompts) if n.endswith("_PROMPT")}
    assert names == set(FIELDS)
    for name, expected in FIELDS.items():
        template = getattr(prompts, name)
        found = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        assert found == expected, name
        filled = template.format(**{f: "X" for f in expected})
        assert "{" not in filled.replace('{"', "").replace("{{", "") or "JSON" in template


def test_every_instruction_template_is_a_task_type_the_scripted_server_recognises():
    named = {getattr(prompts, n) for n in dir(prompts) if n.endswith("INSTRUCTION_PROMPT")}
    assert set(prompts.INSTRUCTION_TEMPLATES.values()) == named and len(named) >= 6
    for task_type, template in prompts.INSTRUCTION_TEMPLATES.items():
        # tests/servers.py answers the instruction step by these (and instruction_pool by "passage>")
        assert "Write one realistic request" in template and "<passage>\n{random_chunk}\n</passage>" in template
