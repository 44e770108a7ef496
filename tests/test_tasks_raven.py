"""RAVEN: the published format reproduced, the generator's problems well posed and realistic."""

import json
import re
from collections import Counter

import pytest

from iclm.tasks import load_task
from iclm.tasks.benchmark import load_rows
from iclm.tasks.raven import load_records, real_path
from iclm.tasks.raven_format import (
    ANGLES,
    COLORS,
    CONFIGS,
    INSTRUCTION,
    LETTERS,
    QUESTION,
    SIZES,
    TYPES,
    parse_panel,
    parse_problem,
    render_panel,
    render_problem,
)
from iclm.tasks.raven_generator import GROUPS, consistent_candidates, generate, infer_rules, panel_values, solve

PER_CONFIG = 200


@pytest.fixture(scope="module")
def real_problems():
    """(context, candidates, answer) of all 2,000 published center_single problems."""
    return [
        parse_problem(record) for part in ("val", "test") for _, record in load_records(real_path("symbolic", part))
    ]


@pytest.fixture(scope="module")
def generated():
    return {config: generate(config, PER_CONFIG, seed=0) for config in CONFIGS}


def test_real_records_are_reproduced_from_their_parsed_panels():
    for part in ("val", "test"):
        symbolic, text = load_records(real_path("symbolic", part)), load_records(real_path("text", part))
        assert len(symbolic) == len(text) == 1000
        for (_, sym), (_, txt) in zip(symbolic, text):
            context, candidates, answer = parse_problem(sym)
            assert render_problem(context, candidates, answer, "center_single", "symbolic") == sym
            assert render_problem(context, candidates, answer, "center_single", "text") == txt


# A text panel of each configuration, built from the vocabulary of the published files.
_ENTITY = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(TYPES[1:])}) rotated at ({'|'.join(map(re.escape, ANGLES))}) degrees"
_SLOT = r" in the (top left|top right|bottom left|bottom right)"
TEXT_PANEL = {
    "center_single": rf"On an image, {_ENTITY}\. ",
    "distribute_four": rf"On an image, {_ENTITY}{_SLOT}(, {_ENTITY}{_SLOT}){{0,3}}\. ",
    "in_center_single_out_center_single": rf"On an image, a second figure is displayed inside a first one\. Outside: {_ENTITY}\. Inside: {_ENTITY}\. ",
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_generated_problems_use_the_published_format(config, generated):
    for problem in generated[config][:50]:
        for rendering in ("text", "symbolic"):
            record = problem.record(rendering)
            turns = record["input"]
            assert len(turns) == 18 and turns[0] == {"role": "system", "content": INSTRUCTION}
            assert turns[-1] == {"role": "user", "content": QUESTION}
            assert all(turn["role"] == "user" for turn in turns[1:])
            prefixes = [f"{i}. " for i in range(1, 9)] + [f"{letter}. " for letter in LETTERS]
            panels = [turn["content"][len(prefix) :] for turn, prefix in zip(turns[1:17], prefixes)]
            assert [turn["content"][: len(prefix)] for turn, prefix in zip(turns[1:17], prefixes)] == prefixes
            assert record["choice_strings"] == list(LETTERS) and record["ideal"] == LETTERS[problem.answer]
            for panel, structured in zip(panels, problem.context + problem.candidates):
                if rendering == "text":
                    assert re.fullmatch(TEXT_PANEL[config], panel), panel
                else:
                    assert parse_panel(panel, config) == structured


def test_center_single_generated_text_matches_the_real_vocabulary(generated):
    real_words = Counter(
        w for _, r in load_records(real_path("text", "val")) for t in r["input"] for w in t["content"].split()
    )
    generated_words = Counter(
        w for p in generated["center_single"] for t in p.record("text")["input"] for w in t["content"].split()
    )
    assert set(generated_words) == set(real_words)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_generated_problem_has_exactly_one_consistent_candidate(config, generated):
    for problem in generated[config]:
        assert consistent_candidates(problem.context, problem.candidates, config) == [problem.answer]
        assert solve(problem.context, problem.candidates, config) == problem.answer
        # The rules it was generated with hold on the completed matrix.
        matrix = list(problem.context) + [problem.candidates[problem.answer]]
        for rules, found in zip(problem.rules, infer_rules(matrix, config)):
            for group, rule in zip(GROUPS, rules):
                assert rule in found[group]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_distractors_differ_from_the_answer_in_one_attribute_and_angle_is_row_noise(config, generated):
    changed = Counter()
    for problem in generated[config]:
        answer = problem.candidates[problem.answer]
        assert len(set(problem.candidates)) == 8
        for index, candidate in enumerate(problem.candidates):
            if index == problem.answer:
                continue
            diffs = [
                (component, attr)
                for component in range(len(CONFIGS[config]))
                for attr in ("Number", "Position", "Type", "Size", "Color")
                if panel_values([candidate], component, attr) != panel_values([answer], component, attr)
            ]
            # A new count also moves positions; any other change touches one attribute only.
            assert len(diffs) == 1 or {attr for _, attr in diffs} == {"Number", "Position"}, diffs
            changed[diffs[0][1] if len(diffs) == 1 else "Number"] += 1
        matrix = list(problem.context) + [answer]
        for component in range(len(CONFIGS[config])):
            angles = [{e[3] for e in panel[component] if e} for panel in matrix]
            assert all(len(a) == 1 for a in angles)  # one angle per panel component
            assert all(
                angles[3 * r] == angles[3 * r + 1] == angles[3 * r + 2] for r in range(3)
            )  # constant along a row
            candidate_angles = {e[3] for c in problem.candidates for e in c[component] if e}
            assert candidate_angles == angles[8]  # never what distinguishes candidates
    expected = {"Type", "Size", "Color"} | ({"Number", "Position"} if config == "distribute_four" else set())
    assert set(changed) == expected


@pytest.mark.parametrize("config", list(CONFIGS))
def test_answer_position_is_uniform(config, generated):
    counts = Counter(problem.answer for problem in generated[config])
    chi_square = sum((counts[i] - PER_CONFIG / 8) ** 2 / (PER_CONFIG / 8) for i in range(8))
    assert chi_square < 24.32  # chi-square, 7 degrees of freedom, p = 0.001


def test_generation_is_deterministic_and_prefix_stable():
    first = generate("distribute_four", 6, seed=7)
    assert generate("distribute_four", 6, seed=7) == first
    assert generate("distribute_four", 3, seed=7) == first[:3]
    assert generate("distribute_four", 6, seed=8) != first


def test_solver_rejects_broken_problems(generated):
    problem = generated["center_single"][0]
    wrong = (problem.answer + 1) % 8
    # The answer replaced by a distractor: nothing left that completes the matrix.
    candidates = list(problem.candidates)
    candidates[problem.answer] = candidates[wrong]
    assert problem.answer not in consistent_candidates(problem.context, candidates, "center_single")
    # Two copies of the answer: not a unique solution.
    candidates = list(problem.candidates)
    candidates[wrong] = candidates[problem.answer]
    assert solve(problem.context, candidates, "center_single") is None
    # A context panel whose type is changed breaks the row rule.
    (entity,) = problem.context[7][0]
    panel = (((entity[0], entity[1], entity[2] % 5 + 1, entity[3]),),)
    broken = (panel,)
    assert problem.answer not in consistent_candidates(
        problem.context[:7] + broken, problem.candidates, "center_single"
    )


def test_solver_explains_the_real_problems(real_problems):
    """The rule semantics match RAVEN's: the real answer is always consistent, and it is the only
    consistent candidate in all but a few (genuinely ambiguous) real problems (measured: 1,975/2,000)."""
    unique = 0
    for context, candidates, answer in real_problems:
        consistent = consistent_candidates(context, candidates, "center_single")
        assert answer in consistent
        unique += consistent == [answer]
    assert unique >= 0.97 * len(real_problems)


def _total_variation(a: Counter, b: Counter) -> float:
    total_a, total_b = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / total_a - b[k] / total_b) for k in set(a) | set(b))


def _attribute_counts(problems):
    counts = [Counter() for _ in range(4)]  # size, color, type, angle over all 16 panels
    for context, candidates, _ in problems:
        for panel in list(context) + list(candidates):
            for k in range(4):
                counts[k][panel[0][0][k]] += 1
    return counts


def _rule_counts(problems):
    counts = {group: Counter() for group in GROUPS[1:]}
    for context, candidates, answer in problems:
        found = infer_rules(list(context) + [candidates[answer]], "center_single")[0]
        for group in counts:
            counts[group][tuple(sorted({rule.name for rule in found[group]}))] += 1
    return counts


def test_generated_center_single_statistics_match_the_real_files(real_problems):
    """Bounds measured on the real data itself: over 200 random 300-problem subsets of the real
    files, the largest TV distance to the whole was 0.063 for attribute marginals and 0.10 for the
    mix of rules; generated problems must be as close as a real sample of the same size."""
    sample = [(p.context, p.candidates, p.answer) for p in generate("center_single", 300, seed=3)]
    for name, real, ours in zip(
        ("size", "color", "type", "angle"), _attribute_counts(real_problems), _attribute_counts(sample)
    ):
        assert _total_variation(real, ours) < 0.08, name
    real_rules, our_rules = _rule_counts(real_problems), _rule_counts(sample)
    for group in real_rules:
        assert _total_variation(real_rules[group], our_rules[group]) < 0.12, group


def test_raven_splits_sizes_pairing_and_generated_flags():
    train, validation = load_task("raven", "text", "train"), load_task("raven", "text", "validation")
    assert (len(train), len(validation)) == (900, 100)
    assert not set(train["problem_id"]) & set(validation["problem_id"])
    assert set(train["domain_id"]) == {2} and set(load_task("raven", "symbolic", "center_single")["domain_id"]) == {3}
    ood_text = load_task("raven", "text", "distribute_four", raven_generated=12, seed=5)
    ood_symbolic = load_task("raven", "symbolic", "distribute_four", raven_generated=12, seed=5)
    assert len(ood_text) == 12 and all(ood_text["generated"])
    assert list(ood_text["problem_id"]) == list(ood_symbolic["problem_id"])
    assert list(ood_text["answer"]) == list(ood_symbolic["answer"])
    extra = load_task("raven", "symbolic", "train", raven_train_generated=10)
    assert len(extra) == 910 and sum(extra["generated"]) == 10
    assert not any(load_task("raven", "symbolic", "center_single")["generated"])


# ---------------------------------------------------------------------------------------------
# Bad input


def _raven_dir(tmp_path, lines):
    folder = tmp_path / "raven" / "text"
    folder.mkdir(parents=True)
    (folder / "center_single_test.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def _good_record():
    _, record = load_records(real_path("text", "test"))[0]
    return json.loads(json.dumps(record))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    root = _raven_dir(tmp_path, [json.dumps(_good_record()), '{"input": [', json.dumps(_good_record())])
    with pytest.raises(ValueError, match=r"center_single_test\.jsonl:2: malformed JSON line"):
        load_rows("raven", "text", "center_single", data_dir=root)


def test_empty_raven_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="file is empty"):
        load_rows("raven", "text", "center_single", data_dir=_raven_dir(tmp_path, [""]))


def test_raven_label_outside_choices_and_bad_shape_are_errors(tmp_path):
    record = _good_record()
    record["ideal"] = "Z"
    with pytest.raises(ValueError, match=r"jsonl:2: label 'Z' is not one of the choices"):
        load_rows(
            "raven",
            "text",
            "center_single",
            data_dir=_raven_dir(tmp_path / "a", [json.dumps(_good_record()), json.dumps(record)]),
        )
    record = _good_record()
    record["input"] = record["input"][:10]
    with pytest.raises(ValueError, match=r"jsonl:1: a RAVEN record has 18 turns"):
        load_rows("raven", "text", "center_single", data_dir=_raven_dir(tmp_path / "b", [json.dumps(record)]))


def test_unknown_raven_names_are_errors():
    with pytest.raises(
        ValueError, match="Unknown raven split 'distribute_nine'; expected one of train, validation, center_single"
    ):
        load_task("raven", "text", "distribute_nine")
    with pytest.raises(ValueError, match="Unknown RAVEN configuration 'left_right'"):
        generate("left_right", 1)
    with pytest.raises(ValueError, match="Not a symbolic RAVEN component"):
        parse_panel("[(A, B, C)] ", "center_single")
    with pytest.raises(ValueError, match="A distribute_four panel has 1 components"):
        render_panel(((None,), ((0, 0, 1, 0),)), "distribute_four", "text")


def test_row_prompts_parse_back_to_panels_in_both_renderings(real_problems, generated):
    """parse_prompt inverts a row's prompt (turns joined by newlines), text or symbolic, every config."""
    from iclm.tasks.raven_format import parse_prompt, parse_text_panel, split_prompt

    real = load_rows("raven", "text", "center_single") + load_rows("raven", "symbolic", "center_single")
    for row, (context, candidates, _) in zip(real, real_problems[1000:] * 2):
        assert parse_prompt(row["prompt"], "center_single", row["rendering"]) == (context, candidates)
    for config, problems in generated.items():
        for problem in problems[:20]:
            for rendering in ("text", "symbolic"):
                prompt = "\n".join(turn["content"] for turn in problem.record(rendering)["input"])
                assert parse_prompt(prompt, config, rendering) == (list(problem.context), list(problem.candidates))
    with pytest.raises(ValueError, match="Not a text center_single panel"):
        parse_text_panel("On an image, a tiny red triangle rotated at 0 degrees, a huge. ", "center_single")
    with pytest.raises(ValueError, match="Not a text center_single panel"):
        parse_text_panel("On an image, a tiny red circle rotated at 7 degrees. ", "center_single")
    with pytest.raises(ValueError, match="no panel 'C.' in order"):
        split_prompt(real[0]["prompt"].replace("\nC. ", "\nc. "))
    with pytest.raises(ValueError, match="Not a RAVEN prompt"):
        split_prompt("The answer is ")
