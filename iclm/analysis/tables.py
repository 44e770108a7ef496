"""The results table in Markdown, for ``results.md`` and the README.

Markdown has no column spans, so the in-distribution / o.o.d. grouping is carried by the column
order (in-distribution first) and an "ID" / "OOD" tag in each header. The best system mean of
each column is bolded; the chance and majority rows give each split's floor.
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
        best[split] = max(means) if means else None

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
    for name, key in (("chance", "chance"), ("majority", "majority")):
        values = [splits[split].get(key) for split in order]
        lines.append("| " + " | ".join([f"*{name}*"] + [_MISSING if v is None else number(v) for v in values]) + " |")
    return "\n".join(lines) + "\n"
