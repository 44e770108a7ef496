"""The results table in Markdown, for ``results.md`` and the README.

Markdown has no column spans, so the in-distribution / o.o.d. grouping is carried by the column
order (in-distribution first) and an "ID" / "OOD" tag in each header. The best system mean of
each column is bolded (unless every system ties); the chance and majority rows give each split's floor.
"""

from __future__ import annotations

import math
from typing import Mapping

from ._splits import ordered_splits

_MISSING = "—"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def results_markdown(results: Mapping, splits: Mapping, *, percent: bool = False, digits: int | None = None) -> str:
    """A Markdown table: systems as rows, test splits as columns, cells ``mean ± half-width`` (95% CI).

    ``results`` / ``splits``: see :mod:`iclm.analysis._splits`. ``percent`` multiplies by 100
    (default ``digits``: 1 for percent, 3 otherwise). A single-run cell reads ``mean (n=1)``, a
    missing one "—". Two final rows give the chance level and, where the split metadata has a
    ``majority`` value, the majority-answer accuracy.
    """
    in_distribution, ood = ordered_splits(results, splits)
    order = in_distribution + ood
    scale = 100.0 if percent else 1.0
    digits = (1 if percent else 3) if digits is None else digits

    def number(value: float) -> str:
        return f"{value * scale:.{digits}f}"

    best = {}
    for split in order:
        means = [by_split[split]["mean"] for by_split in results.values() if split in by_split]
        # Bold marks a best that beats something: when every system ties (all 0.0, say), nothing is bolded.
        best[split] = max(means) if means and max(means) > min(means) else None

    def cell(stats: Mapping | None, split: str) -> str:
        if stats is None:
            return _MISSING
        text = number(stats["mean"])
        text = f"**{text}**" if stats["mean"] == best[split] and len(results) > 1 else text
        half = stats.get("half_width", math.nan)
        return f"{text} ± {number(half)}" if math.isfinite(half) else f"{text} (n={stats.get('n', 1)})"

    header = ["system"] + [f"{'OOD' if splits[split]['ood'] else 'ID'}: {_escape(split)}" for split in order]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * len(order)) + "|"]
    for system, by_split in results.items():
        lines.append("| " + " | ".join([_escape(system)] + [cell(by_split.get(split), split) for split in order]) + " |")
    for name, key in (("chance", "chance"), ("majority", "majority"), ("answer-set only", "answer_set_only")):
        values = [splits[split].get(key) for split in order]
        if key == "answer_set_only" and all(v is None for v in values):
            continue
        lines.append("| " + " | ".join([f"*{name}*"] + [_MISSING if v is None else number(v) for v in values]) + " |")
    return "\n".join(lines) + "\n"


def group_summary(per_seed: Mapping, groups: Mapping) -> dict:
    """``{system: {group: mean_ci95(per-seed mean over the group's splits)}}``.

    ``per_seed``: ``{system: {seed: {split: accuracy}}}``; ``groups``: ``{group: [split, ...]}``. A system
    lacking one of a group's splits in some seed has no entry for that group.
    """
    from .statistics import mean_ci95

    summary = {}
    for system, seeds in per_seed.items():
        summary[system] = {}
        for group, names in groups.items():
            values = [sum(by_split[name] for name in names) / len(names) for by_split in seeds.values()
                      if all(name in by_split for name in names)]
            if values and len(values) == len(seeds):
                summary[system][group] = mean_ci95(values)
    return summary


def groups_markdown(group_results: Mapping, groups: Mapping, baselines: Mapping, *, digits: int = 1) -> str:
    """Systems × groups of splits (%), cells ``mean ± half-width``; then the groups' mean chance, majority and
    best context-blind accuracy (the max of chance, majority and answer-set-only per split)."""

    def number(value: float) -> str:
        return f"{value * 100:.{digits}f}"

    def cell(stats) -> str:
        if stats is None:
            return _MISSING
        half = stats.get("half_width", math.nan)
        return f"{number(stats['mean'])} ± {number(half)}" if math.isfinite(half) else f"{number(stats['mean'])} (n=1)"

    names = list(groups)
    header = ["system"] + [f"{_escape(group)} ({len(groups[group])})" for group in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * len(names)) + "|"]
    for system, by_group in group_results.items():
        lines.append("| " + " | ".join([_escape(system)] + [cell(by_group.get(group)) for group in names]) + " |")

    def blind(split: str) -> float:
        values = [baselines[split].get(key) for key in ("chance", "majority", "answer_set_only")]
        return max(v for v in values if v is not None)

    rows = (("chance", lambda split: baselines[split]["chance"]),
            ("majority answer", lambda split: baselines[split]["majority"]),
            ("best context-blind rule", blind))
    for label, value in rows:
        lines.append("| " + " | ".join([f"*{label}*"] + [number(sum(value(s) for s in groups[g]) / len(groups[g]))
                                                          for g in names]) + " |")
    return "\n".join(lines) + "\n"
