"""Context-blind baselines: how much of a split can be answered without the reasoning it tests.

* chance: the mean of 1 / #choices;
* majority: the share of the most common gold answer (always answering it);
* answer-set-only (RAVEN): :func:`answer_set_only` never reads the eight context panels; it picks
  the candidate that agrees most with the other candidates, attribute by attribute. RAVEN builds
  every distractor by changing one attribute of the answer, so the answer agrees with each
  distractor on all attributes but one and this rule finds it (measured: 100% of the real
  center_single val and test files); I-RAVEN's balanced answer sets
  (``candidates="balanced"``, the ``*_balanced`` splits) bring it down to chance.

A model's accuracy is only evidence of reasoning above the best of these.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

from iclm.tasks.raven_format import Panel, parse_prompt

ATTRIBUTE_NAMES = ("size", "color", "type", "angle")


def panel_features(panel: Panel) -> tuple:
    """A panel's attributes, one feature each: per component, the occupied slots, then each entity
    attribute (size, color, type, angle) as the tuple of its values over the occupied slots."""
    features = []
    for component in panel:
        entities = [entity for entity in component if entity is not None]
        features.append(frozenset(slot for slot, entity in enumerate(component) if entity is not None))
        features.extend(tuple(entity[k] for entity in entities) for k in range(len(ATTRIBUTE_NAMES)))
    return tuple(features)


def agreement_scores(choices_panels: Sequence[Panel]) -> list[int]:
    """Per candidate, the number of (other candidate, attribute) pairs on which it agrees."""
    features = [panel_features(panel) for panel in choices_panels]
    if len({len(f) for f in features}) > 1:
        raise ValueError("All candidates of a problem must have the same components.")
    counts = [Counter(f[k] for f in features) for k in range(len(features[0]))] if features else []
    return [sum(counts[k][value] - 1 for k, value in enumerate(f)) for f in features]


def answer_set_only(choices_panels: Sequence[Panel]) -> int:
    """Index of the candidate that agrees most with the others, attribute by attribute (ties: the
    first). Reads only the candidates, never the context panels."""
    if not choices_panels:
        raise ValueError("answer_set_only needs at least one candidate.")
    scores = agreement_scores(choices_panels)
    return scores.index(max(scores))


def raven_config(row: Mapping) -> str:
    """A RAVEN row's configuration: the first part of its ``problem_id`` (``center_single/test/3``,
    ``distribute_four/test-seed0/3``)."""
    return str(row["problem_id"]).split("/", 1)[0]


def row_candidates(row: Mapping) -> list[Panel]:
    """The 8 candidate panels of a RAVEN row, parsed from its prompt (text or symbolic)."""
    _, candidates = parse_prompt(row["prompt"], raven_config(row), row["rendering"])
    return candidates


def answer_set_only_accuracy(rows: Iterable[Mapping]) -> float:
    """Share of RAVEN rows whose gold answer :func:`answer_set_only` picks."""
    hits = total = 0
    for row in rows:
        guess = answer_set_only(row_candidates(row))
        hits += row["choices"][guess] == row["answer"]
        total += 1
    if not total:
        raise ValueError("No rows to score.")
    return hits / total


def split_baselines(rows: Iterable[Mapping]) -> dict:
    """Baselines of one split (a list of rows or a ``datasets.Dataset``): ``count``, ``chance``,
    ``majority``, ``majority_answer`` and, for RAVEN, ``answer_set_only`` (else ``None``)."""
    rows = list(rows)
    if not rows:
        raise ValueError("A split with no rows has no baselines.")
    answers = Counter(str(row["answer"]) for row in rows)
    majority_answer, majority_count = max(sorted(answers.items()), key=lambda item: item[1])
    tasks = {row["task"] for row in rows}
    answer_set: Optional[float] = answer_set_only_accuracy(rows) if tasks == {"raven"} else None
    return {
        "count": len(rows),
        "chance": math.fsum(1 / len(row["choices"]) for row in rows) / len(rows),
        "majority": majority_count / len(rows),
        "majority_answer": majority_answer,
        "answer_set_only": answer_set,
    }


def baselines(splits: Mapping[str, Iterable[Mapping]]) -> dict[str, dict]:
    """:func:`split_baselines` of every split, e.g. of a ``DatasetDict`` from ``load_benchmark``."""
    return {name: split_baselines(rows) for name, rows in splits.items()}
