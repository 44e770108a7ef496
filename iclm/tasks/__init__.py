"""The ICLM paper's reasoning benchmarks (ACRE, RAVEN) as ``datasets`` objects.

Public API (imported lazily so that e.g. the RAVEN generator loads without ``datasets``):

* :func:`load_task` / :func:`load_benchmark` -- ``Dataset`` / ``DatasetDict`` with the columns
  ``prompt, answer, choices, task, rendering, split, distribution, domain_id, generated, problem_id``;
* :class:`AnswerOnlyCollator` -- tokenises ``prompt + answer (+eos)``, loss on the answer only;
* :mod:`iclm.tasks.raven_generator` -- RAVEN problem generator (original or I-RAVEN balanced
  answer sets) and blind solver;
* :mod:`iclm.tasks.acre_generator` -- ACRE problem generator and the blicket solver that derives
  every query's label from the context.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_task": "benchmark",
    "load_benchmark": "benchmark",
    "load_rows": "benchmark",
    "split_name": "benchmark",
    "SPLITS": "benchmark",
    "AnswerOnlyCollator": "collator",
    "COLUMNS": "records",
    "DOMAIN_IDS": "records",
    "TASKS": "records",
    "RENDERINGS": "records",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
