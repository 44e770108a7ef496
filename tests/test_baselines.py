"""Context-blind baselines: chance, majority answer, and RAVEN's answer-set-only shortcut.

Measured with these functions: answer-set-only picks the right answer in 100% of the real
center_single val (1,000) and test (1,000) problems, text and symbolic; 100% of 300 generated
original-style center_single and in_center_single_out_center_single problems, 95.7% of
distribute_four; 12.7% / 12.7% / 12.0% (chance 12.5%) of 300 balanced ones of each configuration.
"""

import pytest

from iclm.analysis.baselines import (
    agreement_scores,
    answer_set_only,
    answer_set_only_accuracy,
    baselines,
    panel_features,
    raven_config,
    split_baselines,
)
from iclm.tasks import load_benchmark
from iclm.tasks.benchmark import load_rows
from iclm.tasks.raven import generated_problems, generated_rows, real_rows
from iclm.tasks.raven_format import CONFIGS


def _panel(size, color, kind, angle=3):
    return (((size, color, kind, angle),),)


def test_answer_set_only_finds_the_answer_of_one_attribute_distractors():
    answer = _panel(2, 4, 3)
    distractors = [_panel(0, 4, 3), _panel(5, 4, 3), _panel(2, 1, 3), _panel(2, 9, 3), _panel(2, 4, 1),
                   _panel(2, 4, 5), _panel(1, 4, 3)]
    for position in range(8):
        candidates = distractors[:position] + [answer] + distractors[position:]
        assert answer_set_only(candidates) == position
    assert agreement_scores([answer] + distractors)[0] == 7 * 4  # agrees with each on 4 of 5 features


def test_ties_go_to_the_first_candidate_and_context_is_never_needed():
    balanced = [_panel(s, c, t) for s in (1, 2) for c in (3, 4) for t in (2, 5)]  # a 2x2x2 bisection
    assert len(set(agreement_scores(balanced))) == 1
    assert answer_set_only(balanced) == 0
    assert answer_set_only(balanced[::-1]) == 0
    assert panel_features(_panel(1, 2, 3, 4)) == (frozenset({0}), (1,), (2,), (3,), (4,))
    with pytest.raises(ValueError, match="at least one candidate"):
        answer_set_only([])


@pytest.mark.parametrize("rendering", ["text", "symbolic"])
@pytest.mark.parametrize("part", ["val", "test"])
def test_answer_set_only_solves_every_real_center_single_problem(rendering, part):
    rows = real_rows(rendering, part, "x")
    assert len(rows) == 1000 and {raven_config(row) for row in rows} == {"center_single"}
    assert answer_set_only_accuracy(rows) == 1.0


@pytest.mark.parametrize("config", list(CONFIGS))
def test_original_generated_answer_sets_have_the_shortcut_and_balanced_ones_do_not(config):
    original = generated_rows(generated_problems(config, 120, 0, "test"), "symbolic", "x", purpose="test", seed=0)
    balanced = load_rows("raven", "text", f"{config}_balanced", raven_generated=120)
    assert answer_set_only_accuracy(original) >= (0.9 if config == "distribute_four" else 0.99)
    accuracy = answer_set_only_accuracy(balanced)
    assert accuracy <= 0.2
    # Every candidate of a balanced set agrees with the others equally: the pick is position only.
    problems = generated_problems(config, 120, 0, "test", "balanced")
    assert all(len(set(agreement_scores(p.candidates))) == 1 for p in problems)
    assert accuracy == sum(p.answer == 0 for p in problems) / len(problems)


def test_split_baselines_of_acre_and_raven():
    iid = split_baselines(load_rows("acre", "symbolic", "iid"))
    assert iid == {"count": 8000, "chance": pytest.approx(1 / 3), "majority": 2965 / 8000, "majority_answer": "0",
                   "answer_set_only": None}
    raven = split_baselines(load_rows("raven", "symbolic", "center_single"))
    assert raven["chance"] == pytest.approx(1 / 8) and raven["answer_set_only"] == 1.0
    assert (raven["majority"], raven["majority_answer"]) == (0.143, "E")  # 143 of 1,000 test answers are E
    rows = [{"task": "acre", "answer": a, "choices": ["x", "y"]} for a in "xxy"]
    assert split_baselines(rows)["majority"] == pytest.approx(2 / 3) and split_baselines(rows)["chance"] == 0.5
    with pytest.raises(ValueError, match="no rows"):
        split_baselines([])


def test_baselines_of_a_benchmark():
    bench = load_benchmark(
        renderings=("text",), splits=("iid", "center_single", "center_single_balanced"), raven_generated_per_config=40
    )
    table = baselines(bench)
    assert list(table) == ["acre_text_iid", "raven_text_center_single", "raven_text_center_single_balanced"]
    assert table["acre_text_iid"]["answer_set_only"] is None
    assert table["raven_text_center_single"]["answer_set_only"] == 1.0
    assert table["raven_text_center_single_balanced"]["answer_set_only"] <= 0.25
