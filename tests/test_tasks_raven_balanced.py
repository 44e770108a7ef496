"""I-RAVEN-style balanced answer sets: attribute bisection, one consistent candidate, no mode."""

from collections import Counter

import pytest

from iclm.tasks import load_benchmark, load_task
from iclm.tasks.raven_format import CONFIGS, parse_prompt
from iclm.tasks.raven_generator import _balanced_keys, consistent_candidates, generate, generate_problem, panel_values

PER_CONFIG = 150
ATTRIBUTES = ("Number", "Position", "Type", "Size", "Color")


@pytest.fixture(scope="module")
def balanced():
    return {config: generate(config, PER_CONFIG, seed=0, candidates="balanced") for config in CONFIGS}


def _values(panel, config):
    """Each (component, attribute) value of a panel (Number: count, Position: slot set)."""
    return {
        (component, attr): panel_values([panel], component, attr)[0]
        for component in range(len(CONFIGS[config]))
        for attr in ATTRIBUTES
    }


@pytest.mark.parametrize("config", list(CONFIGS))
def test_exactly_one_consistent_candidate_and_all_distinct(config, balanced):
    for problem in balanced[config]:
        assert len(set(problem.candidates)) == 8
        assert consistent_candidates(problem.context, problem.candidates, config) == [problem.answer]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_candidates_are_a_three_level_bisection_of_the_answer(config, balanced):
    """Three attributes are changed, each to one new value; the candidates are the answer with every
    subset of those changes, so each changed attribute shows each of its 2 values on 4 candidates."""
    changed_attributes = Counter()
    for problem in balanced[config]:
        answer = _values(problem.candidates[problem.answer], config)
        values = [_values(candidate, config) for candidate in problem.candidates]
        changed = {key for candidate in values for key in answer if candidate[key] != answer[key]}
        changed_attributes.update(attr for _, attr in changed)
        # The occupied slots move with Number, so Position follows it; otherwise 3 levels.
        levels = {key for key in changed if not (key[1] == "Position" and (key[0], "Number") in changed)}
        assert len(levels) == 3, changed
        for key in changed:
            counts = Counter(candidate[key] for candidate in values)
            assert len(counts) == 2 and set(counts.values()) == {4}, (key, counts)
        # Every subset of the 3 changes occurs once: the differences to the answer are all distinct.
        differences = [frozenset(key for key in levels if candidate[key] != answer[key]) for candidate in values]
        assert len(set(differences)) == 8
    expected = {"Type", "Size", "Color"} | ({"Number", "Position"} if config == "distribute_four" else set())
    assert set(changed_attributes) == expected
    if config == "center_single":  # the only three attributes: all of them, every time
        assert changed_attributes == {"Type": PER_CONFIG, "Size": PER_CONFIG, "Color": PER_CONFIG}


def test_positions_are_not_bisected_under_a_number_rule(balanced):
    """Under a Number rule positions are free, so a moved answer would be just as right."""
    seen = Counter()
    for problem in balanced["distribute_four"]:
        answer = problem.candidates[problem.answer]
        count = sum(entity is not None for entity in answer[0])
        keys = _balanced_keys(answer, problem.rules, "distribute_four")
        under_number = problem.rules[0][0].attr == "Number"
        assert ((0, "Position") in keys) == (not under_number and count < 4)
        assert (0, "Number") in keys and {(0, "Type"), (0, "Size"), (0, "Color")} <= set(keys)
        seen[under_number] += 1
    assert seen[True] and seen[False]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_answer_position_is_uniform(config, balanced):
    counts = Counter(problem.answer for problem in balanced[config])
    chi_square = sum((counts[i] - PER_CONFIG / 8) ** 2 / (PER_CONFIG / 8) for i in range(8))
    assert chi_square < 24.32  # chi-square, 7 degrees of freedom, p = 0.001


def test_balanced_and_original_share_their_matrices_and_the_default_is_unchanged(balanced):
    original = generate("center_single", PER_CONFIG, seed=0)
    assert generate("center_single", 20, seed=0, candidates="original") == original[:20]
    same = sum(a.context == b.context for a, b in zip(original, balanced["center_single"]))
    assert same >= 0.9 * PER_CONFIG  # only redrawn matrices differ
    assert generate("center_single", 5, seed=4, candidates="balanced") == generate(
        "center_single", 5, seed=4, candidates="balanced"
    )


def test_unknown_candidate_style_is_an_error():
    import random

    with pytest.raises(ValueError, match="Unknown candidates style 'iraven'; expected one of original, balanced"):
        generate_problem("center_single", random.Random(0), candidates="iraven")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_balanced_splits_load_in_both_renderings(config):
    split = f"{config}_balanced"
    text = load_task("raven", "text", split, raven_generated=12, seed=5)
    symbolic = load_task("raven", "symbolic", split, raven_generated=12, seed=5)
    assert len(text) == len(symbolic) == 12 and all(text["generated"]) and set(text["split"]) == {split}
    assert list(text["problem_id"]) == list(symbolic["problem_id"])
    assert text["problem_id"][0] == f"{config}/test-balanced-seed5/0"
    assert list(text["answer"]) == list(symbolic["answer"])
    problems = generate(config, 12, seed=5, candidates="balanced")
    for rows in (text, symbolic):
        for row, problem in zip(rows, problems):
            assert parse_prompt(row["prompt"], config, row["rendering"]) == (
                list(problem.context),
                list(problem.candidates),
            )
            assert row["choices"].index(row["answer"]) == problem.answer


def test_balanced_splits_are_opt_in():
    default = load_benchmark(
        tasks=("raven",), renderings=("symbolic",), limit_per_split=2, raven_generated_per_config=4
    )
    assert not any(name.endswith("_balanced") for name in default)
    named = load_benchmark(
        tasks=("raven",), renderings=("text",), splits=("center_single_balanced",), raven_generated_per_config=4
    )
    assert list(named) == ["raven_text_center_single_balanced"] and len(named["raven_text_center_single_balanced"]) == 4
