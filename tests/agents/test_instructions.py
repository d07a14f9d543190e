"""Task types of instructions (weights, draws, templates) and the near-duplicate filter by meaning."""

import asyncio
import random

import numpy as np
import pytest

from agents.errors import InputError
from agents.instructions import InstructionDeduper, draw_task_type, task_weights, write_instruction
from agents.prompts import INSTRUCTION_TEMPLATES
from agents.schemas import Instruction
from tests.graphs.test_task_types import JSON_PICKLE, PARAPHRASE, UNRELATED, chi_square


def test_task_weights_accept_a_mapping_or_its_json_and_refuse_unknown_types_and_bad_weights():
    assert task_weights('{"timeline": 1, "qa": 2, "open": 0}') == [("qa", 2.0), ("timeline", 1.0)]
    assert task_weights({"qa": 2, "timeline": 1}) == task_weights('{"timeline": 1, "qa": 2}')
    with pytest.raises(InputError, match=r"unknown task types \['poetry'\]"):
        task_weights({"qa": 1, "poetry": 1})
    for bad in ({"qa": -1, "summary": 2}, {"qa": 0}, {"qa": "many"}, {}):
        with pytest.raises(InputError, match="weights must be numbers"):
            task_weights(bad)


@pytest.mark.parametrize("weights", [{"qa": 0.3, "summary": 0.2, "comparison": 0.2, "aggregation": 0.15,
                                      "timeline": 0.15}, {"qa": 1, "timeline": 3}])
def test_draws_follow_the_configured_proportions(weights):
    pairs = task_weights(weights)
    counts: dict[str, int] = {}
    for i in range(200):
        name = draw_task_type(pairs, random.Random(f"0:{i}:task"))
        counts[name] = counts.get(name, 0) + 1
    assert set(counts) == set(weights)  # every type drawn, none outside the mapping
    assert chi_square(counts, pairs) < 18.47  # chi-square, 4 degrees of freedom at p = 0.001 (fewer: stricter)


def test_a_draw_is_a_function_of_its_rng_seed_alone():
    pairs = task_weights({"qa": 1, "summary": 1, "comparison": 1})
    first = [draw_task_type(pairs, random.Random(f"7:{i}:task")) for i in range(50)]
    again = [draw_task_type(pairs, random.Random(f"7:{i}:task")) for i in reversed(range(50))][::-1]
    assert first == again and len(set(first)) == 3


class _RecordingLLM:
    """Answers every JSON request with a fixed instruction and keeps the prompts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def json(self, messages, schema, max_tokens=None):
        self.prompts.append(messages[-1]["content"])
        return Instruction(instruction="Compare  the two\nmodules.")


def test_write_instruction_fills_every_task_types_template():
    llm = _RecordingLLM()
    for task_type, template in INSTRUCTION_TEMPLATES.items():
        assert asyncio.run(write_instruction(llm, "A {braced} chunk.", template)) == "Compare the two modules."
        sent = llm.prompts[-1]
        assert "<passage>\nA {braced} chunk.\n</passage>" in sent and "{random_chunk}" not in sent, task_type
        assert sent == template.format(random_chunk="A {braced} chunk.")
    assert len(set(llm.prompts)) == len(INSTRUCTION_TEMPLATES)


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_closest_meaning_sees_lower_indices_only_and_embeds_vectorless_instructions_once():
    deduper = InstructionDeduper(0.7)
    deduper.add("alpha", 2, _unit(1, 0, 0))
    deduper.add("beta", 5, _unit(0, 1, 0))
    assert deduper.closest_meaning(_unit(1, 0, 0), below=2) == 0.0
    assert deduper.closest_meaning(_unit(1, 0, 0), below=3) == pytest.approx(1.0)
    assert deduper.closest_meaning(_unit(0, 1, 0), below=5) == pytest.approx(0.0)
    assert deduper.closest_meaning(_unit(1, 1, 0)) == pytest.approx(0.7071, abs=1e-4)

    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.stack([_unit(0, 0, 1) for _ in texts])

    for i in range(20):  # an earlier run's instructions come back without vectors; the matrix grows past 16
        deduper.add(f"text {i}", 10 + i)
    with pytest.raises(ValueError, match="need `embed`"):
        deduper.closest_meaning(_unit(0, 0, 1), below=40)
    assert deduper.closest_meaning(_unit(0, 0, 1), below=11, embed=embed) == pytest.approx(1.0)
    assert deduper.closest_meaning(_unit(0, 0, 1), below=10, embed=embed) == pytest.approx(0.0)
    assert calls == [[f"text {i}" for i in range(20)]]  # one batch, once
    assert len(deduper) == 22


def test_a_paraphrase_shares_few_3_grams_but_its_meaning_with_minilm(minilm):
    deduper = InstructionDeduper(0.7)
    vectors = minilm.embed_queries([JSON_PICKLE, PARAPHRASE, UNRELATED])
    deduper.add(JSON_PICKLE, 0, vectors[0])
    assert deduper.similar(PARAPHRASE, 1) < 0.2 and deduper.similar(UNRELATED, 1) < 0.2  # 3-grams miss it
    assert deduper.closest_meaning(vectors[1], 1) > 0.95  # meaning catches it
    assert deduper.closest_meaning(vectors[2], 1) < 0.5
