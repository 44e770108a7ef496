"""RAVEN (Zhang et al., CVPR 2019): the published center_single text/symbolic files and generated rows.

Only center_single val/test are published in text form; the real val file is the training data
(part of it held out for validation), the real test file the i.i.d. test. Generated problems
(o.o.d. configurations, optional extra training data) become rows the same way, flagged
``generated=True``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence

from .files import PathLike, data_dir, read_jsonl, resolve
from .raven_format import LETTERS
from .raven_generator import Problem, generate
from .records import check_name, evals_to_row

REAL_CONFIG = "center_single"
REAL_PARTS = ("val", "test")
PROBLEM_TURNS = 18  # instruction, 8 panels, 8 candidates, question


def real_path(rendering: str, part: str, root: Optional[PathLike] = None) -> Path:
    """Path of ``raven/<rendering>/center_single_<part>.jsonl`` (or ``.jsonl.gz``)."""
    check_name("rendering", rendering, ("text", "symbolic"))
    check_name("RAVEN file", part, REAL_PARTS)
    return resolve(data_dir(root), f"raven/{rendering}/{REAL_CONFIG}_{part}.jsonl")


@functools.lru_cache(maxsize=8)
def load_records(path: Path) -> tuple[tuple[int, dict], ...]:
    """``(line, record)`` of a published RAVEN file, checked for the 18-turn A-H format."""
    records = tuple(read_jsonl(path))
    for line, record in records:
        where = f"{path}:{line}"
        turns = record.get("input")
        if not isinstance(turns, list) or len(turns) != PROBLEM_TURNS:
            raise ValueError(
                f"{where}: a RAVEN record has {PROBLEM_TURNS} turns (instruction, 8 panels, 8 candidates, question)."
            )
        if record.get("choice_strings") != list(LETTERS):
            raise ValueError(f"{where}: RAVEN choices must be {list(LETTERS)}, got {record.get('choice_strings')!r}.")
    return records


def real_rows(
    rendering: str, part: str, split: str, *, lines: Optional[set[int]] = None, root: Optional[PathLike] = None
) -> list[dict]:
    """Rows of a published file; ``lines`` (0-based record indices) restricts to those problems.

    ``problem_id`` is ``center_single/<part>/<index>``, the same in both renderings.
    """
    path = real_path(rendering, part, root)
    return [
        evals_to_row(
            record,
            where=f"{path}:{line}",
            task="raven",
            rendering=rendering,
            split=split,
            problem_id=f"{REAL_CONFIG}/{part}/{index}",
        )
        for index, (line, record) in enumerate(load_records(path))
        if lines is None or index in lines
    ]


@functools.lru_cache(maxsize=32)
def generated_problems(
    config: str, count: int, seed: int, purpose: str, candidates: str = "original"
) -> tuple[Problem, ...]:
    """Cached so that the text and symbolic rows of a split render the same problems;
    ``candidates``: ``"original"`` or ``"balanced"`` (I-RAVEN) answer sets."""
    return tuple(generate(config, count, seed=seed, purpose=purpose, candidates=candidates))


def generated_rows(problems: Sequence[Problem], rendering: str, split: str, *, purpose: str, seed: int) -> list[dict]:
    """Rows of generated problems; ``problem_id`` is ``<config>/<purpose>-seed<seed>/<index>``."""
    return [
        evals_to_row(
            problem.record(rendering),
            where=f"generated {problem.config} problem {index}",
            task="raven",
            rendering=rendering,
            split=split,
            problem_id=f"{problem.config}/{purpose}-seed{seed}/{index}",
            generated=True,
        )
        for index, problem in enumerate(problems)
    ]
