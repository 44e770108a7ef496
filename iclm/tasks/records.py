"""The row schema shared by every benchmark split, and the deterministic subset/split helpers.

Every row, whatever its task, has the same columns so that splits can be concatenated, routed
(``domain_id``) and evaluated per split/rendering without task-specific code downstream.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional, Sequence

TASKS = ("acre", "raven")
RENDERINGS = ("text", "symbolic")

# The paper's four training distributions, i.e. the domains used for oracle routing.
DOMAIN_IDS = {
    ("acre", "text"): 0,
    ("acre", "symbolic"): 1,
    ("raven", "text"): 2,
    ("raven", "symbolic"): 3,
}

COLUMNS = (
    "prompt",
    "answer",
    "choices",
    "task",
    "rendering",
    "split",
    "distribution",
    "domain_id",
    "generated",
    "problem_id",
)


def features():
    """``datasets.Features`` of a benchmark row (imported lazily: ``datasets`` is heavy)."""
    import datasets

    return datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "task": datasets.Value("string"),
            "rendering": datasets.Value("string"),
            "split": datasets.Value("string"),
            "distribution": datasets.Value("string"),
            "domain_id": datasets.Value("int64"),
            "generated": datasets.Value("bool"),
            "problem_id": datasets.Value("string"),
        }
    )


def check_name(kind: str, value: str, allowed: Iterable[str]) -> str:
    """Return ``value`` if allowed, else raise a ValueError that lists the allowed names."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"Unknown {kind} {value!r}; expected one of {', '.join(allowed)}.")
    return value


def evals_prompt(turns: Any, where: str) -> str:
    """The prompt of an evals-format record: its turns' contents joined with newlines."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'input' must be a non-empty list of turns.")
    contents = []
    for turn in turns:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("content"), str):
            raise ValueError(f"{where}: every turn must be an object with a string 'content', got {turn!r}.")
        contents.append(turn["content"])
    return "\n".join(contents)


def make_row(
    *,
    prompt: str,
    answer: Any,
    choices: Sequence[Any],
    task: str,
    rendering: str,
    split: str,
    problem_id: str,
    generated: bool = False,
    where: str = "",
) -> dict:
    """One benchmark row; the answer must be one of the choices (compared as strings)."""
    check_name("task", task, TASKS)
    check_name("rendering", rendering, RENDERINGS)
    choices = [str(choice) for choice in choices]
    answer = str(answer)
    if not choices:
        raise ValueError(f"{where}: the record has no choices.")
    if answer not in choices:
        raise ValueError(f"{where}: label {answer!r} is not one of the choices {choices}.")
    return {
        "prompt": prompt,
        "answer": answer,
        "choices": choices,
        "task": task,
        "rendering": rendering,
        "split": split,
        "distribution": f"{task}/{rendering}",
        "domain_id": DOMAIN_IDS[(task, rendering)],
        "generated": bool(generated),
        "problem_id": str(problem_id),
    }


def evals_to_row(record: Any, *, where: str, **meta: Any) -> dict:
    """Row from an evals-format record ``{"input": [...], "choice_strings": [...], "ideal": ...}``."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    missing = [key for key in ("input", "choice_strings", "ideal") if key not in record]
    if missing:
        raise ValueError(f"{where}: record lacks {', '.join(missing)}.")
    if not isinstance(record["choice_strings"], list):
        raise ValueError(f"{where}: 'choice_strings' must be a list.")
    return make_row(
        prompt=evals_prompt(record["input"], where),
        answer=record["ideal"],
        choices=record["choice_strings"],
        where=where,
        **meta,
    )


def rows_to_dataset(rows: Sequence[dict]):
    """A ``datasets.Dataset`` with the benchmark schema (also for an empty list)."""
    import datasets

    columns = {name: [row[name] for row in rows] for name in COLUMNS}
    return datasets.Dataset.from_dict(columns, features=features())


def stratified_subset(labels: Sequence[Any], limit: Optional[int], seed: str) -> list[int]:
    """Indices of a deterministic random subset of size ``limit`` whose label mix follows the whole.

    Quotas are proportional to each label's share (largest remainder), the members of each label
    drawn at random with ``seed``; indices are returned sorted so that file order is kept.
    """
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    if limit < 0:
        raise ValueError(f"limit must be a non-negative number of rows, got {limit}.")
    rng = random.Random(seed)
    by_label: dict[Any, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    keys = sorted(by_label, key=str)
    exact = {key: limit * len(by_label[key]) / len(labels) for key in keys}
    quota = {key: int(exact[key]) for key in keys}
    leftover = limit - sum(quota.values())
    for key in sorted(keys, key=lambda key: (quota[key] - exact[key], rng.random()))[:leftover]:
        quota[key] += 1
    chosen: list[int] = []
    for key in keys:
        members = list(by_label[key])
        rng.shuffle(members)
        chosen.extend(members[: quota[key]])
    return sorted(chosen)


def held_out(count: int, fraction: float, seed: str) -> set[int]:
    """A deterministic random set of ``round(fraction * count)`` problem indices (the validation part)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}.")
    indices = list(range(count))
    random.Random(seed).shuffle(indices)
    return set(indices[: round(fraction * count)])
