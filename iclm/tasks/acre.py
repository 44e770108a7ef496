"""ACRE (Zhang et al., CVPR 2021): raw blicket-detection problems -> the published text/symbolic records.

A raw problem is 10 trials: 6 context trials (light ``on``/``off``) and 4 queries (light ``no``,
with ``label`` 0 = off, 1 = undetermined, 2 = on). Each query becomes one evals-style record
whose prompt repeats the instructions and the 6 context trials, exactly as the
"Logical-and-abstract-reasoning" conversion used by the ICLM paper does (checked character for
character against its output in the tests).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from .acre_files import load_objects, load_problems, raw_path
from .files import PathLike
from .records import check_name, evals_to_row

# Test splits and the raw folder that holds them; training uses IID/val.json.
SPLIT_FOLDERS = {"iid": "IID", "comp": "Comp", "sys": "Sys"}
CONTEXT_STATES = ("on", "off")

TEXT_INSTRUCTIONS = (
    "Objects of various color, shape, and texture are displayed. Some objects may contain a device "
    "to turn a light on if displayed. From the observations, deduce if the light is on, off, or if "
    "the state cannot be determined. Your answer must contain a single word:",
    "on.",
    "off.",
    "undetermined.",
)
SYMBOLIC_INSTRUCTIONS = (
    "Figure out the pattern in the following examples and apply it to the test case. Your answer "
    "must follow the format of the examples. You can answer 1 if the solution cannot be determined. "
    "Your answer must be one of the following choices:",
    "0.",
    "1.",
    "2.",
)
# Query label -> answer, per rendering; the published symbolic records keep integers.
TEXT_LABELS = ("off", "undetermined", "on")
SYMBOLIC_LABELS = (0, 1, 2)
SYMBOLIC_LIGHT = {"off": 0, "on": 2}


def _describe(object_ids: list[int], objects: dict[int, dict], where: str) -> str:
    sentences = []
    for object_id in object_ids:
        if object_id not in objects:
            raise ValueError(f"{where}: object id {object_id} is not in acre/object_dict.json.")
        attributes = objects[object_id]
        sentences.append(f"A {attributes['color']} {attributes['shape']} in {attributes['material']} is visible. ")
    return "".join(sentences)


def problem_to_records(problem: list[dict], rendering: str, objects: dict[int, dict], where: str = "") -> list[dict]:
    """The evals-format records (one per query, in trial order) of one raw problem."""
    check_name("rendering", rendering, ("text", "symbolic"))
    context = [trial for trial in problem if trial["light_state"] in CONTEXT_STATES]
    queries = [trial for trial in problem if trial["light_state"] == "no"]
    if rendering == "text":
        system = list(TEXT_INSTRUCTIONS) + [
            _describe(trial["objects"], objects, where) + f"The light is {trial['light_state']}." for trial in context
        ]
        asks = [_describe(trial["objects"], objects, where) + "The state of the light is " for trial in queries]
        labels = TEXT_LABELS
    else:
        system = list(SYMBOLIC_INSTRUCTIONS) + [
            f"{trial['objects']} -> {SYMBOLIC_LIGHT[trial['light_state']]}" for trial in context
        ]
        asks = [f"{trial['objects']} -> " for trial in queries]
        labels = SYMBOLIC_LABELS
    turns = [{"role": "system", "content": content} for content in system]
    return [
        {
            "input": turns + [{"role": "user", "content": ask}],
            "choice_strings": list(labels),
            "ideal": labels[trial["label"]],
        }
        for ask, trial in zip(asks, queries)
    ]


def _rows(
    numbered, rendering: str, split: str, objects: dict, source: str, id_prefix: str, generated: bool
) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for number, problem in numbered:
        where = f"{source}: problem {number}"
        for query, record in enumerate(problem_to_records(problem, rendering, objects, where)):
            rows.append(
                evals_to_row(
                    record,
                    where=f"{where}, query {query}",
                    task="acre",
                    rendering=rendering,
                    split=split,
                    problem_id=f"{id_prefix}/{number}/{query}",
                    generated=generated,
                )
            )
    return rows


def acre_rows(
    folder: str,
    part: str,
    rendering: str,
    split: str,
    *,
    problems: Optional[set[int]] = None,
    root: Optional[PathLike] = None,
) -> list[dict]:
    """Benchmark rows of ``acre/raw/<folder>/<part>.json``; ``problems`` restricts to those problem indices.

    ``problem_id`` is ``<folder>/<part>/<problem>/<query>`` so that the text and symbolic rows of
    the same query pair up.
    """
    path = raw_path(folder, part, root)
    numbered = [
        (number, problem)
        for number, problem in enumerate(load_problems(path))
        if problems is None or number in problems
    ]
    return _rows(numbered, rendering, split, load_objects(root), str(path), f"{folder}/{part}", False)


@functools.lru_cache(maxsize=16)
def generated_problems(
    count: int, seed: int, root: Optional[PathLike] = None, regime: str = "IID", purpose: str = "train"
) -> tuple:
    """``count`` generated raw problems (:mod:`iclm.tasks.acre_generator`), none of which shares its
    context with a real problem under the data root (the test files and IID/val); cached so that
    the text and symbolic rows of a split hold the same problems."""
    from .acre_generator import generate, real_context_keys

    return tuple(generate(count, seed, regime=regime, purpose=purpose, exclude=real_context_keys(root)))


def generated_rows(
    problems, rendering: str, split: str, *, seed: int, regime: str = "IID", purpose: str = "train",
    root: Optional[PathLike] = None,
) -> list[dict]:
    """Rows of generated problems, flagged ``generated``; ``problem_id`` is
    ``<regime>-generated/<purpose>-seed<seed>/<problem>/<query>``."""
    source = f"generated ACRE {regime} {purpose} seed {seed}"
    prefix = f"{regime}-generated/{purpose}-seed{seed}"
    return _rows(enumerate(problems), rendering, split, load_objects(root), source, prefix, True)
