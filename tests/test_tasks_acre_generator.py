"""ACRE generator: the solver explains the real data, generated problems look like the real ones,
are deterministic, never repeat a real test problem, and load as training data."""

import gzip
import json
import shutil
from collections import Counter

import pytest

from iclm.tasks import load_benchmark, load_task
from iclm.tasks.acre import load_objects, load_problems, problem_to_records, raw_path
from iclm.tasks.acre_generator import (
    CONTEXT_TRIALS,
    QUERY_TYPES,
    check_problem,
    context_key,
    generate,
    object_roles,
    query_label,
    query_type,
    real_context_keys,
    shares,
    statistics,
)
from iclm.tasks.benchmark import load_rows
from iclm.tasks.files import PACKAGE_DATA_DIR

REAL_FILES = [("IID", "val"), ("IID", "test"), ("Comp", "test"), ("Sys", "test")]
SAMPLE = 2000  # generated problems compared with the 2,000 of a real file


@pytest.fixture(scope="module")
def iid_sample():
    return generate(SAMPLE, seed=0)


def _on(*objects):
    return {"light_state": "on", "objects": list(objects)}


def _off(*objects):
    return {"light_state": "off", "objects": list(objects)}


# ---------------------------------------------------------------------------------------------
# Solver


@pytest.mark.parametrize("folder,part", REAL_FILES)
def test_solver_reproduces_every_real_label_and_query_type(folder, part):
    """Measured: 8,000 / 8,000 labels and types on each carried file (and on Comp/Sys val)."""
    problems = load_problems(raw_path(folder, part))
    labels = types = total = 0
    for problem in problems:
        context = problem[:CONTEXT_TRIALS]
        for trial in problem[CONTEXT_TRIALS:]:
            labels += query_label(context, trial["objects"]) == trial["label"]
            types += query_type(context, trial["objects"], trial.get("ref")) == trial["type"]
            total += 1
        check_problem(problem)
    assert total == 8000
    assert labels == types == total


def test_solver_follows_the_blicket_rules():
    # a lights the machine alone; b is seen with the light off (and on with a: screened off);
    # c and d lit it together (one of them is a blicket, which one is undetermined).
    context = [_on(1), _off(2), _on(1, 2), _on(3, 4, 2), _off(5), _off(2, 5)]
    assert query_label(context, [1]) == 2  # direct: a blicket
    assert query_label(context, [2]) == 0  # screened off
    assert query_label(context, [5]) == 0  # only ever off
    assert query_label(context, [3]) == 1  # backward blocking: undetermined
    assert query_label(context, [5, 3, 4]) == 2  # the whole set that lit it: on
    assert query_label(context, [2, 5]) == 0
    assert object_roles(context) == {1: "direct", 2: "screen_off", 3: "potential", 4: "potential", 5: "direct"}
    assert query_type(context, [5, 3, 4], ref=4) == "indirect"  # a set of candidates
    assert query_type(context, [2, 5, 3], ref=5) == "potential"
    # The only object of an on trial not seen with the light off is a blicket (indirect).
    context = [_on(1), _off(2), _on(1, 2), _on(3, 6), _off(6), _off(7)]
    assert query_label(context, [3]) == 2 and object_roles(context)[3] == "indirect"
    with pytest.raises(ValueError, match="Inconsistent ACRE context"):
        query_label([_on(1, 2), _off(1), _off(2)], [1])


def test_check_problem_rejects_a_wrong_label_or_type():
    problem = json.loads(json.dumps(load_problems(raw_path("IID", "val"))[0]))
    problem[6]["label"] = (problem[6]["label"] + 1) % 3
    with pytest.raises(ValueError, match="the context proves"):
        check_problem(problem)
    problem = json.loads(json.dumps(load_problems(raw_path("IID", "val"))[0]))
    problem[7]["type"] = next(t for t in QUERY_TYPES if t != problem[7]["type"])
    with pytest.raises(ValueError, match="the context makes it"):
        check_problem(problem)


# ---------------------------------------------------------------------------------------------
# Generated problems against the real IID/val file


def _max_gap(real, ours):
    real, ours = shares(real), shares(ours)
    return max(abs(real.get(key, 0.0) - ours.get(key, 0.0)) for key in set(real) | set(ours))


def test_generated_statistics_match_iid_val(iid_sample):
    """Measured (real IID/val vs 2,000 generated, seed 0), percent: labels off/undetermined/on
    37.7/27.3/35.0 vs 38.0/26.5/35.6; types direct/indirect/screen_off/potential 37.1/11.0/24.7/27.3
    vs 37.1/11.2/25.3/26.5; objects per context trial 1..6 43.0/33.0/14.6/6.7/2.1/0.5 vs
    43.0/33.4/14.8/6.3/1.9/0.6; per query 50.0/25.1/12.6/9.8/2.2/0.2 vs 50.0/25.6/12.8/9.8/1.8/0.1."""
    real, ours = statistics(load_problems(raw_path("IID", "val"))), statistics(iid_sample)
    assert _max_gap(real["label"], ours["label"]) < 0.02
    assert _max_gap(real["type"], ours["type"]) < 0.02
    assert _max_gap(real["context_objects"], ours["context_objects"]) < 0.01
    assert _max_gap(real["query_objects"], ours["query_objects"]) < 0.01
    assert _max_gap(real["problem_objects"], ours["problem_objects"]) < 0.03  # 5-8 objects
    assert _max_gap(real["family"], ours["family"]) < 0.03
    assert set(ours["pattern"]) == set(real["pattern"]) and len(real["pattern"]) == 18
    assert _max_gap(real["pattern"], ours["pattern"]) < 0.015  # each of 18 patterns ~5.6%
    assert set(ours["object_id"]) == set(real["object_id"]) == set(range(48))
    assert set(ours["query_objects"]) <= set(real["query_objects"])
    assert set(ours["context_objects"]) <= set(real["context_objects"])


@pytest.mark.parametrize("regime", ["Comp", "Sys"])
def test_other_regimes_match_their_real_test_files(regime):
    real = statistics(load_problems(raw_path(regime, "test")))
    ours = statistics(generate(1000, seed=0, regime=regime, purpose="test"))
    assert _max_gap(real["label"], ours["label"]) < 0.03
    assert _max_gap(real["type"], ours["type"]) < 0.03
    assert set(ours["object_id"]) == set(real["object_id"])  # Comp: ids 0-23 only
    assert set(ours["family"]) == set(real["family"])  # Sys: on_on_off only


def test_generated_problems_are_well_posed_and_in_the_raw_format(iid_sample):
    objects = load_objects()
    for problem in iid_sample[:300]:
        check_problem(problem)  # every label/type is what the context proves
        states = [trial["light_state"] for trial in problem]
        assert sorted(states[:3]) == ["off", "on", "on"] and states[6:] == ["no"] * 4
        assert all(set(t) == {"light_state", "objects"} for t in problem[:6])
        assert all(set(t) == {"light_state", "objects", "label", "type"} for t in problem[6:8])
        assert all(set(t) == {"light_state", "objects", "label", "type", "ref"} for t in problem[8:])
        for trial in problem[8:]:
            ref = problem[trial["ref"]]
            assert ref["light_state"] == "off" and trial["objects"][: len(ref["objects"])] == ref["objects"]
        for rendering in ("text", "symbolic"):
            assert len(problem_to_records(problem, rendering, objects)) == 4


def test_generated_file_loads_through_the_real_loader(tmp_path, iid_sample):
    """A generated file is a valid raw file: the loader for the real ones reads it unchanged."""
    folder = tmp_path / "acre" / "raw" / "IID"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps(iid_sample[:25]))
    shutil.copy(PACKAGE_DATA_DIR / "acre" / "object_dict.json.gz", tmp_path / "acre")
    rows = load_rows("acre", "symbolic", "iid", data_dir=tmp_path)
    assert len(rows) == 100
    labels = [t["label"] for p in iid_sample[:25] for t in p[6:]]
    assert [int(row["answer"]) for row in rows] == labels


def test_generation_is_deterministic_and_prefix_stable():
    first = generate(6, seed=7)
    assert generate(6, seed=7) == first
    assert generate(3, seed=7) == first[:3]
    assert generate(6, seed=8) != first
    assert generate(6, seed=7, purpose="test") != first


# ---------------------------------------------------------------------------------------------
# Never a real test problem


def test_excluded_contexts_are_redrawn_and_problems_are_distinct():
    plain = generate(30, seed=1)
    excluded = {context_key(plain[7]), context_key(plain[19])}
    redrawn = generate(30, seed=1, exclude=excluded)
    assert not {context_key(p) for p in redrawn} & excluded
    assert redrawn[:7] == plain[:7] and redrawn[8:19] == plain[8:19] and redrawn[20:] == plain[20:]
    assert len({context_key(p) for p in generate(500, seed=2)}) == 500


def test_a_test_file_holding_the_generated_problems_forces_new_ones(tmp_path):
    """The loader dedupes against the test files of its data root: put exactly the problems it
    would generate into IID/test.json and it must draw others."""
    would_be = generate(40, seed=0)
    folder = tmp_path / "acre" / "raw" / "IID"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps(would_be))
    shutil.copy(PACKAGE_DATA_DIR / "acre" / "object_dict.json.gz", tmp_path / "acre")
    rows = load_rows("acre", "symbolic", "train_generated", acre_generated=40, data_dir=tmp_path)
    assert len(rows) == 160
    real_prompts = {r["prompt"] for r in load_rows("acre", "symbolic", "iid", data_dir=tmp_path)}
    assert not real_prompts & {row["prompt"] for row in rows}


def test_no_generated_training_problem_is_a_real_problem():
    from iclm.tasks.acre import generated_problems

    problems = generated_problems(6000, 0, None)
    keys = {context_key(p) for p in problems}
    assert len(keys) == 6000
    real = real_context_keys(files=[("IID", "test"), ("Comp", "test"), ("Sys", "test"), ("IID", "val")])
    assert len(real) == 8000  # 4 files x 2,000 problems, all with distinct contexts
    assert not keys & real
    real_problems = {json.dumps(p) for folder, part in REAL_FILES for p in load_problems(raw_path(folder, part))}
    assert not real_problems & {json.dumps(p) for p in problems}


# ---------------------------------------------------------------------------------------------
# Loading


def test_train_generated_split_loads_pairs_and_subsets():
    text = load_task("acre", "text", "train_generated", acre_generated=50, seed=3)
    symbolic = load_task("acre", "symbolic", "train_generated", acre_generated=50, seed=3)
    assert len(text) == len(symbolic) == 200
    assert all(text["generated"]) and set(text["split"]) == {"train_generated"}
    assert list(text["problem_id"]) == list(symbolic["problem_id"])
    assert text["problem_id"][0] == "IID-generated/train-seed3/0/0"
    assert [c.index(a) for c, a in zip(text["choices"], text["answer"])] == [
        c.index(a) for c, a in zip(symbolic["choices"], symbolic["answer"])
    ]
    assert set(text["domain_id"]) == {0} and set(symbolic["domain_id"]) == {1}
    subset = load_task("acre", "text", "train_generated", acre_generated=50, seed=3, limit=30)
    assert len(subset) == 30 and set(subset["problem_id"]) <= set(text["problem_id"])
    other_seed = load_task("acre", "symbolic", "train_generated", acre_generated=50, seed=4)
    assert list(other_seed["prompt"]) != list(symbolic["prompt"])


def test_generated_problems_can_be_added_to_train():
    plain = load_task("acre", "symbolic", "train")
    extra = load_task("acre", "symbolic", "train", acre_train_generated=10)
    assert len(extra) == len(plain) + 40 and sum(extra["generated"]) == 40
    generated_ids = [pid for pid, flag in zip(extra["problem_id"], extra["generated"]) if flag]
    assert generated_ids == list(load_task("acre", "symbolic", "train_generated", acre_generated=10)["problem_id"])
    assert len(load_task("acre", "symbolic", "validation", acre_train_generated=10)) == 800


def test_opt_in_split_is_not_in_the_default_benchmark_but_loads_by_name():
    default = load_benchmark(tasks=("acre",), renderings=("symbolic",), limit_per_split=3)
    assert "acre_symbolic_train_generated" not in default
    named = load_benchmark(
        tasks=("acre",), renderings=("symbolic",), splits=("train_generated",), limit_per_split=8, acre_generated=20
    )
    assert list(named) == ["acre_symbolic_train_generated"] and len(named["acre_symbolic_train_generated"]) == 8
    with pytest.raises(ValueError, match="generated ACRE problems must not be negative"):
        load_rows("acre", "text", "train_generated", acre_generated=-1)


def test_real_context_keys_reads_what_the_data_root_holds(tmp_path):
    assert real_context_keys(tmp_path) == frozenset()  # nothing there: nothing to avoid
    with pytest.raises(FileNotFoundError):
        real_context_keys(tmp_path, files=[("IID", "test")])
    folder = tmp_path / "acre" / "raw" / "Sys"
    folder.mkdir(parents=True)
    with gzip.open(folder / "test.json.gz", "wt") as handle:
        json.dump(generate(3, seed=5), handle)
    assert real_context_keys(tmp_path) == {context_key(p) for p in generate(3, seed=5)}
    assert Counter(len(key) for key in real_context_keys(tmp_path)) == {6: 3}
