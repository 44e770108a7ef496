"""Shared machinery of the iclm accuracy metrics: optional grouping inputs and baselines.

``evaluate`` requires every declared input; the per-split/per-rendering inputs are optional
here, so missing ones are filled with an empty group name (meaning "not given") before
``evaluate`` sees them. Every result carries the chance and majority-class baselines, overall
and per group, since an accuracy means little without them on 3-way (ACRE) and 8-way (RAVEN)
choices.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Optional, Sequence

import evaluate

GROUPINGS = {"splits": "per_split", "renderings": "per_rendering"}


def summarize(correct: Sequence[bool], labels: Sequence[Any], chances: Sequence[Optional[float]]) -> dict:
    """Accuracy, chance (mean 1/number of choices) and majority-class accuracy of one group."""
    count = len(correct)
    known = [chance for chance in chances if chance is not None]
    return {
        "accuracy": sum(map(bool, correct)) / count if count else 0.0,
        "chance": sum(known) / len(known) if known else None,
        "majority": Counter(labels).most_common(1)[0][1] / count if count else 0.0,
        "count": count,
    }


def grouped_summary(correct, labels, chances, groups: dict[str, Sequence[str]]) -> dict:
    """:func:`summarize` overall and, for each grouping whose names were given, per group."""
    result = summarize(correct, labels, chances)
    for grouping, names in groups.items():
        if not any(names):
            continue
        members: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            members[name].append(index)
        result[GROUPINGS[grouping]] = {
            name: summarize([correct[i] for i in idx], [labels[i] for i in idx], [chances[i] for i in idx])
            for name, idx in sorted(members.items())
        }
    return result


class GroupedAccuracy(evaluate.Metric):
    """Base of the iclm metrics: fills optional inputs (``optional_inputs``: name -> default)."""

    optional_inputs: dict[str, Any] = {"splits": "", "renderings": ""}

    def _fill(self, predictions: Any, kwargs: dict, batched: bool) -> dict:
        if predictions is None:
            return kwargs
        size = len(predictions) if batched else None
        for name, default in self.optional_inputs.items():
            if kwargs.get(name) is None:
                kwargs[name] = [default] * size if batched else default
        return kwargs

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metric; optional inputs may be left out."""
        return super().compute(predictions=predictions, references=references, **self._fill(predictions, kwargs, True))

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of examples; optional inputs may be left out."""
        return super().add_batch(
            predictions=predictions, references=references, **self._fill(predictions, kwargs, True)
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example; optional inputs may be left out."""
        return super().add(prediction=prediction, reference=reference, **self._fill(prediction, kwargs, False))
