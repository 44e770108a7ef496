"""ACRE: the published conversion reproduced character for character, splits, subsets, bad input."""

import gzip
import json
from pathlib import Path

import pytest

from iclm.tasks import COLUMNS, DOMAIN_IDS, load_task
from iclm.tasks.acre import load_objects, load_problems, problem_to_records, raw_path
from iclm.tasks.benchmark import load_rows

REFERENCE = Path(__file__).parent / "data" / "acre_reference"


@pytest.mark.parametrize("rendering", ["text", "symbolic"])
def test_conversion_matches_published_reference_character_for_character(rendering):
    lines = (REFERENCE / f"IID_test_first5_{rendering}.jsonl").read_text().splitlines()
    problems = load_problems(raw_path("IID", "test"))[:5]
    mine = [json.dumps(r) for p in problems for r in problem_to_records(p, rendering, load_objects())]
    assert len(lines) == 20
    assert mine == lines


@pytest.mark.parametrize("rendering", ["text", "symbolic"])
def test_rows_carry_the_reference_prompt_and_answer(rendering):
    references = [
        json.loads(line) for line in (REFERENCE / f"IID_test_first5_{rendering}.jsonl").read_text().splitlines()
    ]
    rows = load_rows("acre", rendering, "iid")[:20]
    for row, reference in zip(rows, references):
        assert row["prompt"] == "\n".join(turn["content"] for turn in reference["input"])
        assert row["answer"] == str(reference["ideal"])
        assert row["choices"] == [str(choice) for choice in reference["choice_strings"]]
    assert rows[0]["prompt"].endswith("The state of the light is " if rendering == "text" else "] -> ")


def test_columns_domains_and_split_sizes():
    train = load_task("acre", "symbolic", "train")
    validation = load_task("acre", "symbolic", "validation")
    comp = load_task("acre", "text", "comp")
    assert list(train.column_names) == list(COLUMNS)
    assert (len(train), len(validation), len(comp)) == (7200, 800, 8000)
    assert set(train["domain_id"]) == {DOMAIN_IDS[("acre", "symbolic")]} == {1}
    assert set(comp["domain_id"]) == {0}
    assert set(comp["split"]) == {"comp"} and set(comp["distribution"]) == {"acre/text"}
    assert not any(comp["generated"])


def test_validation_is_held_out_by_problem_deterministically():
    def problems(split, seed):
        return {pid.rsplit("/", 1)[0] for pid in load_task("acre", "text", split, seed=seed)["problem_id"]}

    train, validation = problems("train", 0), problems("validation", 0)
    assert not train & validation
    assert len(train | validation) == 2000 and len(validation) == 200
    assert problems("validation", 0) == validation
    assert problems("validation", 1) != validation


def test_text_and_symbolic_rows_pair_up():
    text, symbolic = load_task("acre", "text", "sys"), load_task("acre", "symbolic", "sys")
    assert list(text["problem_id"]) == list(symbolic["problem_id"])
    text_labels = [c.index(a) for c, a in zip(text["choices"], text["answer"])]
    symbolic_labels = [c.index(a) for c, a in zip(symbolic["choices"], symbolic["answer"])]
    assert text_labels == symbolic_labels


def test_limit_is_a_stratified_seeded_subset_shared_by_renderings():
    full = load_rows("acre", "text", "iid")
    subset = load_task("acre", "text", "iid", limit=90, seed=3)
    assert len(subset) == 90
    assert list(subset["problem_id"]) != [row["problem_id"] for row in full[:90]]
    for answer in ("off", "on", "undetermined"):
        share = sum(row["answer"] == answer for row in full) / len(full)
        assert abs(list(subset["answer"]).count(answer) - 90 * share) <= 1
    assert list(load_task("acre", "symbolic", "iid", limit=90, seed=3)["problem_id"]) == list(subset["problem_id"])
    assert list(load_task("acre", "text", "iid", limit=90, seed=4)["problem_id"]) != list(subset["problem_id"])


# ---------------------------------------------------------------------------------------------
# Bad input: a data_dir under tmp_path with one broken file.


def _data_dir(tmp_path, problems=None, text=None, objects=None):
    folder = tmp_path / "acre" / "raw" / "IID"
    folder.mkdir(parents=True)
    content = text if text is not None else json.dumps(problems)
    (folder / "test.json").write_text(content)
    table = objects or {
        str(i): {"material": "metal", "size": "medium", "shape": "cube", "color": "red"} for i in range(5)
    }
    with gzip.open(tmp_path / "acre" / "object_dict.json.gz", "wt") as handle:
        json.dump(table, handle)
    return tmp_path


def _problem(label=2, objects=(1,)):
    return [
        {"light_state": "on", "objects": [1]},
        {"light_state": "off", "objects": [2]},
        {"light_state": "no", "objects": list(objects), "label": label},
    ]


def test_a_valid_custom_data_dir_loads(tmp_path):
    rows = load_rows("acre", "text", "iid", data_dir=_data_dir(tmp_path, [_problem()]))
    assert [row["answer"] for row in rows] == ["on"]
    assert rows[0]["prompt"].endswith("A red cube in metal is visible. The state of the light is ")


def test_malformed_json_names_file_and_line(tmp_path):
    root = _data_dir(tmp_path, text='[\n  [{"light_state": "on",\n   "objects": [1]]\n]')
    with pytest.raises(ValueError, match=r"IID/test\.json:3: malformed JSON"):
        load_rows("acre", "text", "iid", data_dir=root)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="test.json: file is empty"):
        load_rows("acre", "text", "iid", data_dir=_data_dir(tmp_path, text=""))


def test_label_outside_the_choices_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"problem 0, trial 2: query label must be 0 \(off\), 1 \(undetermined\) or 2"):
        load_rows("acre", "symbolic", "iid", data_dir=_data_dir(tmp_path, [_problem(label=3)]))


def test_unknown_object_and_bad_light_state_are_errors(tmp_path):
    with pytest.raises(ValueError, match="object id 99 is not in acre/object_dict.json"):
        load_rows("acre", "text", "iid", data_dir=_data_dir(tmp_path / "a", [_problem(objects=(99,))]))
    bad = _problem()
    bad[0]["light_state"] = "dim"
    with pytest.raises(ValueError, match="light_state must be 'on', 'off' or 'no', got 'dim'"):
        load_rows("acre", "text", "iid", data_dir=_data_dir(tmp_path / "b", [bad]))


def test_unknown_names_list_the_allowed_ones(tmp_path):
    with pytest.raises(
        ValueError, match="Unknown acre split 'test'; expected one of train, validation, iid, comp, sys"
    ):
        load_task("acre", "text", "test")
    with pytest.raises(ValueError, match="Unknown task 'arc'; expected one of acre, raven"):
        load_task("arc", "text", "train")
    with pytest.raises(ValueError, match="Unknown rendering 'pixel'; expected one of text, symbolic"):
        load_task("acre", "pixel", "train")


def test_missing_files_and_folders_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows("acre", "text", "iid", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"Comp/test\.json"):
        load_rows("acre", "text", "comp", data_dir=_data_dir(tmp_path, [_problem()]))
