"""Reading ACRE's raw files: the data root's ``acre/raw/<folder>/<part>.json`` problems and ``object_dict.json``.

Shared by :mod:`iclm.tasks.acre` (the published records) and :mod:`iclm.tasks.acre_generator` (which avoids the
real problems' contexts), so that neither imports the other back.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from .files import PathLike, data_dir, read_json, resolve


def raw_path(folder: str, part: str, root: Optional[PathLike] = None) -> Path:
    """Path of ``acre/raw/<folder>/<part>.json`` (or ``.json.gz``) under the data root."""
    return resolve(data_dir(root), f"acre/raw/{folder}/{part}.json")


@functools.lru_cache(maxsize=8)
def load_objects(root: Optional[PathLike] = None) -> dict[int, dict]:
    """Object id -> attributes (``material``, ``shape``, ``color``), from ``acre/object_dict.json``."""
    path = resolve(data_dir(root), "acre/object_dict.json")
    table = read_json(path)
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping object ids to attributes.")
    objects = {}
    for key, attributes in table.items():
        missing = [name for name in ("material", "shape", "color") if name not in (attributes or {})]
        if not key.isdigit() or missing:
            raise ValueError(
                f"{path}: object {key!r} needs an integer id and material, shape, color (missing {missing})."
            )
        objects[int(key)] = attributes
    return objects


@functools.lru_cache(maxsize=16)
def load_problems(path: Path) -> tuple:
    """The raw problems of one file, validated (light states, object lists, query labels)."""
    problems = read_json(path)
    if not isinstance(problems, list) or not problems:
        raise ValueError(f"{path}: expected a non-empty JSON list of problems.")
    for number, problem in enumerate(problems):
        where = f"{path}: problem {number}"
        if not isinstance(problem, list) or not problem:
            raise ValueError(f"{where}: expected a non-empty list of trials.")
        for position, trial in enumerate(problem):
            here = f"{where}, trial {position}"
            if not isinstance(trial, dict):
                raise ValueError(f"{here}: expected an object, got {type(trial).__name__}.")
            state = trial.get("light_state")
            if state not in ("on", "off", "no"):
                raise ValueError(f"{here}: light_state must be 'on', 'off' or 'no', got {state!r}.")
            objects = trial.get("objects")
            if not isinstance(objects, list) or not objects or not all(isinstance(o, int) for o in objects):
                raise ValueError(f"{here}: 'objects' must be a non-empty list of integer object ids.")
            if state == "no" and trial.get("label") not in (0, 1, 2):
                raise ValueError(
                    f"{here}: query label must be 0 (off), 1 (undetermined) or 2 (on), got {trial.get('label')!r}."
                )
        if not any(trial["light_state"] == "no" for trial in problem):
            raise ValueError(f"{where}: the problem has no query trial (light_state 'no').")
    return tuple(problems)
