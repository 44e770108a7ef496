"""load_benchmark: keys, selection, schema, and its argument errors."""

import datasets
import pytest

from iclm.tasks import COLUMNS, load_benchmark, load_task
from iclm.tasks.records import features, stratified_subset


def test_keys_follow_task_rendering_split_and_selection():
    bench = load_benchmark(
        tasks=("acre", "raven"),
        renderings=("symbolic",),
        splits=("validation", "distribute_four"),
        limit_per_split=5,
        raven_generated_per_config=7,
    )
    assert isinstance(bench, datasets.DatasetDict)
    assert list(bench) == ["acre_symbolic_validation", "raven_symbolic_validation", "raven_symbolic_distribute_four"]
    assert [len(d) for d in bench.values()] == [5, 5, 5]
    for name, dataset in bench.items():
        assert dataset.features == features() and list(dataset.column_names) == list(COLUMNS)
        task, _, split = name.split("_", 2)
        assert set(dataset["task"]) == {task} and set(dataset["split"]) == {split}


def test_limit_larger_than_a_split_keeps_it_whole_and_fraction_zero_empties_validation():
    assert len(load_task("raven", "text", "validation", limit=10_000)) == 100
    empty = load_task("raven", "text", "validation", validation_fraction=0.0)
    assert len(empty) == 0 and empty.features == features()
    assert len(load_task("raven", "text", "train", validation_fraction=0.0)) == 1000


def test_argument_errors():
    with pytest.raises(ValueError, match="Unknown split 'iid'; expected one of center_single, distribute_four"):
        load_benchmark(tasks=("raven",), splits=("iid",))
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        load_task("acre", "text", "validation", validation_fraction=1.5)
    with pytest.raises(ValueError, match="limit must be a non-negative number of rows"):
        stratified_subset(["a", "b"], -1, "seed")
