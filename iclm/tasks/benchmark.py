"""The paper's benchmark as ``datasets`` objects: ACRE and RAVEN, text and symbolic, IID and o.o.d.

Training data follows the paper: ACRE trains on IID (here IID/val.json, the raw train file
is not carried) and is tested on IID, Comp and Sys; RAVEN trains on center_single (the real
val file, optionally plus generated problems) and is tested on the real center_single test
file and on generated ``distribute_four`` and ``in_center_single_out_center_single``. A
fraction of the training problems is held out, by problem, as ``validation``. Everything is
deterministic given ``seed``, and the text and symbolic versions of a split hold the same
problems (same ``problem_id``), so renderings can be paired.

Opt-in splits (loaded by name, left out of :func:`load_benchmark`'s default selection):

* ``acre`` ``train_generated``: ``acre_generated`` problems from :mod:`iclm.tasks.acre_generator`
  (IID regime), none sharing its context with a real problem; ``acre_train_generated`` adds the
  first N of them to ``train`` instead;
* ``raven`` ``<config>_balanced`` (``center_single_balanced``, ``distribute_four_balanced``,
  ``in_center_single_out_center_single_balanced``): ``raven_generated`` generated problems whose
  candidates are I-RAVEN's balanced answer set (``candidates="balanced"``), where no
  context-blind rule beats chance.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import acre, raven
from .files import PathLike
from .raven_format import CONFIGS
from .records import RENDERINGS, TASKS, check_name, held_out, rows_to_dataset, stratified_subset

TRAIN_SPLITS = ("train", "validation")
SPLITS = {
    "acre": TRAIN_SPLITS + tuple(acre.SPLIT_FOLDERS),
    "raven": TRAIN_SPLITS + ("center_single", "distribute_four", "in_center_single_out_center_single"),
}
BALANCED_SUFFIX = "_balanced"
OPT_IN_SPLITS = {
    "acre": ("train_generated",),
    "raven": tuple(config + BALANCED_SUFFIX for config in CONFIGS),
}
ALL_SPLITS = {task: SPLITS[task] + OPT_IN_SPLITS[task] for task in SPLITS}
OOD_RAVEN_CONFIGS = tuple(config for config in CONFIGS if config != raven.REAL_CONFIG)
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_RAVEN_GENERATED = 1000  # problems per generated o.o.d. configuration (the real files hold 1,000)
ACRE_TRAIN_FILE = ("IID", "val")
ACRE_PROBLEMS_PER_FILE = 2000
DEFAULT_ACRE_GENERATED = 6000  # the size of ACRE's own (not carried) train split


def load_rows(
    task: str,
    rendering: str,
    split: str,
    *,
    data_dir: Optional[PathLike] = None,
    seed: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    raven_generated: int = DEFAULT_RAVEN_GENERATED,
    raven_train_generated: int = 0,
    acre_generated: int = DEFAULT_ACRE_GENERATED,
    acre_train_generated: int = 0,
    raven_train_candidates: str = "original",
) -> list[dict]:
    """All rows of one task x rendering x split, as dicts (see :func:`load_task`)."""
    check_name("task", task, TASKS)
    check_name("rendering", rendering, RENDERINGS)
    check_name(f"{task} split", split, ALL_SPLITS[task])
    if task == "acre":
        generated = []
        if split == "train_generated" or (split == "train" and acre_train_generated):
            count = acre_generated if split == "train_generated" else acre_train_generated
            if count < 0:
                raise ValueError(f"The number of generated ACRE problems must not be negative, got {count}.")
            problems = acre.generated_problems(count, seed, data_dir)
            generated = acre.generated_rows(problems, rendering, split, seed=seed, root=data_dir)
            if split == "train_generated":
                return generated
        if split in TRAIN_SPLITS:
            path = acre.raw_path(*ACRE_TRAIN_FILE, data_dir)
            validation = held_out(len(acre.load_problems(path)), validation_fraction, f"{seed}/acre/validation")
            problems = validation if split == "validation" else set(range(len(acre.load_problems(path)))) - validation
            return acre.acre_rows(*ACRE_TRAIN_FILE, rendering, split, problems=problems, root=data_dir) + generated
        return acre.acre_rows(acre.SPLIT_FOLDERS[split], "test", rendering, split, root=data_dir)
    if split in TRAIN_SPLITS:
        count = len(raven.load_records(raven.real_path(rendering, "val", data_dir)))
        validation = held_out(count, validation_fraction, f"{seed}/raven/validation")
        lines = validation if split == "validation" else set(range(count)) - validation
        rows = raven.real_rows(rendering, "val", split, lines=lines, root=data_dir)
        if split == "train" and raven_train_generated:
            problems = raven.generated_problems(raven.REAL_CONFIG, raven_train_generated, seed, "train",
                                                raven_train_candidates)
            purpose = "train" if raven_train_candidates == "original" else f"train-{raven_train_candidates}"
            rows += raven.generated_rows(problems, rendering, split, purpose=purpose, seed=seed)
        return rows
    if split == raven.REAL_CONFIG:
        return raven.real_rows(rendering, "test", split, root=data_dir)
    if split.endswith(BALANCED_SUFFIX):
        config = split[: -len(BALANCED_SUFFIX)]
        problems = raven.generated_problems(config, raven_generated, seed, "test", "balanced")
        return raven.generated_rows(problems, rendering, split, purpose="test-balanced", seed=seed)
    problems = raven.generated_problems(split, raven_generated, seed, "test")
    return raven.generated_rows(problems, rendering, split, purpose="test", seed=seed)


def load_task(
    task: str,
    rendering: str,
    split: str,
    *,
    limit: Optional[int] = None,
    data_dir: Optional[PathLike] = None,
    seed: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    raven_generated: int = DEFAULT_RAVEN_GENERATED,
    raven_train_generated: int = 0,
    acre_generated: int = DEFAULT_ACRE_GENERATED,
    acre_train_generated: int = 0,
    raven_train_candidates: str = "original",
):
    """One split as a ``datasets.Dataset`` with the columns of :data:`iclm.tasks.records.COLUMNS`.

    Args:
        task: ``"acre"`` or ``"raven"``.
        rendering: ``"text"`` or ``"symbolic"``.
        split: ``"train"``, ``"validation"``, or a test split: ``"iid"``, ``"comp"``, ``"sys"``
            (ACRE); ``"center_single"``, ``"distribute_four"``,
            ``"in_center_single_out_center_single"`` (RAVEN); opt-in: ``"train_generated"``
            (ACRE), ``"<config>_balanced"`` (RAVEN), see the module docstring.
        limit: keep at most this many rows, drawn at random with ``seed`` and stratified by
            answer (the same rows in both renderings); ``None`` keeps all.
        data_dir: a folder with ``acre/`` and ``raven/`` (default: the data in the package).
        seed: drives the validation hold-out, the subsets and the generated RAVEN problems.
        validation_fraction: share of training problems held out as ``validation``.
        raven_generated: problems generated per o.o.d. RAVEN test configuration.
        raven_train_generated: generated center_single problems added to RAVEN ``train``.
        raven_train_candidates: their answer sets, ``"original"`` or ``"balanced"`` (I-RAVEN).
        acre_generated: generated problems in ACRE ``train_generated`` (4 rows each).
        acre_train_generated: generated problems added to ACRE ``train`` (the first ones of
            ``train_generated``).
    """
    rows = load_rows(
        task,
        rendering,
        split,
        data_dir=data_dir,
        seed=seed,
        validation_fraction=validation_fraction,
        raven_generated=raven_generated,
        raven_train_generated=raven_train_generated,
        acre_generated=acre_generated,
        acre_train_generated=acre_train_generated,
        raven_train_candidates=raven_train_candidates,
    )
    labels = [row["choices"].index(row["answer"]) for row in rows]
    keep = stratified_subset(labels, limit, f"{seed}/{task}/{split}/subset")
    return rows_to_dataset([rows[index] for index in keep])


def split_name(task: str, rendering: str, split: str) -> str:
    """The ``DatasetDict`` key of a split, e.g. ``acre_text_iid``."""
    return f"{task}_{rendering}_{split}"


def load_benchmark(
    tasks: Sequence[str] = TASKS,
    renderings: Sequence[str] = RENDERINGS,
    splits: Optional[Sequence[str]] = None,
    *,
    limit_per_split: Optional[int] = None,
    raven_generated_per_config: int = DEFAULT_RAVEN_GENERATED,
    raven_train_generated: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    data_dir: Optional[PathLike] = None,
    seed: int = 0,
    acre_generated: int = DEFAULT_ACRE_GENERATED,
    acre_train_generated: int = 0,
):
    """A ``DatasetDict`` with one entry per task x rendering x split (keys from :func:`split_name`).

    ``splits`` selects split names (``None``: every split of each task in :data:`SPLITS`, not the
    opt-in ones of :data:`OPT_IN_SPLITS`, which are loaded when named); a name must exist for
    at least one of the tasks. Other arguments are as in :func:`load_task`.
    """
    import datasets

    for task in tasks:
        check_name("task", task, TASKS)
    for rendering in renderings:
        check_name("rendering", rendering, RENDERINGS)
    default = sorted({split for task in tasks for split in SPLITS[task]})
    known = default + sorted({split for task in tasks for split in OPT_IN_SPLITS[task]} - set(default))
    for split in splits or ():
        check_name("split", split, known)
    result = datasets.DatasetDict()
    for task in tasks:
        for rendering in renderings:
            for split in ALL_SPLITS[task]:
                if split not in (SPLITS[task] if splits is None else splits):
                    continue
                result[split_name(task, rendering, split)] = load_task(
                    task,
                    rendering,
                    split,
                    limit=limit_per_split,
                    data_dir=data_dir,
                    seed=seed,
                    validation_fraction=validation_fraction,
                    raven_generated=raven_generated_per_config,
                    raven_train_generated=raven_train_generated,
                    acre_generated=acre_generated,
                    acre_train_generated=acre_train_generated,
                )
    if not result:
        raise ValueError("No split selected: check tasks, renderings and splits.")
    return result
