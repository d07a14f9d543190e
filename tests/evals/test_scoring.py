"""RULER's string_match_all / string_match_part, on cases made by hand."""

import pytest

from evals.scoring import postprocess, score, string_match_all, string_match_part


def test_match_all_gives_partial_credit_and_ignores_case():
    refs = [["7381022", "1120334", "Blue-Whale", "x"]]
    assert string_match_all(["The numbers are 7381022 and 1120334; blue-WHALE."], refs) == 75.0
    assert string_match_all(["nothing here"], refs) == 0.0
    assert string_match_all(["7381022 1120334 blue-whale X"], refs) == 100.0
    # the mean over examples, rounded to two places as RULER rounds
    assert string_match_all(["a", "b", "c"], [["a"], ["a"], ["c", "z", "q"]]) == round((1 + 0 + 1 / 3) / 3 * 100, 2)


def test_match_part_is_any_reference():
    refs = [["Paris", "the city of Paris"], ["1889"]]
    assert string_match_part(["It is PARIS.", "in 1890"], refs) == 50.0
    assert string_match_part(["paris", "1889"], refs) == 100.0


def test_per_example_scores_postprocess_like_ruler():
    assert postprocess("  42\x00\x1fend \n") == "42\n\nend"
    assert score("  The answer:\t7381022 ", ["7381022"], "all") == 1.0
    assert score("", ["7381022"], "all") == 0.0
    assert score("Paris", ["paris", "lyon"], "part") == 1.0 and score("Paris", ["paris", "lyon"], "all") == 0.5
    with pytest.raises(ValueError, match="metric must be one of"):
        score("x", ["x"], "exact")
