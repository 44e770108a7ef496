"""The shared shape of experiment results, checked once for the figures and the tables.

``results``: ``{system: {split: {"mean", "ci95_low", "ci95_high", "half_width", "n", ...}}}`` (what
:func:`iclm.analysis.summarise_runs` / :func:`iclm.analysis.mean_ci95` produce); a system may
lack a split. ``splits``: ``{split: {"ood": bool, "chance": float, "majority": float (optional)}}``,
the display order within each group; in-distribution splits are always shown before o.o.d. ones.
"""

from __future__ import annotations

from typing import Mapping


def ordered_splits(results: Mapping[str, Mapping[str, Mapping]], splits: Mapping[str, Mapping]) -> tuple[list, list]:
    """(in-distribution split names, o.o.d. split names), after checking both structures agree."""
    if not results:
        raise ValueError("results holds no system.")
    if not splits:
        raise ValueError("splits holds no test split.")
    for split, meta in splits.items():
        if "ood" not in meta or "chance" not in meta:
            raise ValueError(f"split {split!r} metadata needs 'ood' and 'chance', got {sorted(meta)}.")
    for system, by_split in results.items():
        unknown = set(by_split) - set(splits)
        if unknown:
            raise ValueError(f"system {system!r} has results for splits without metadata: {sorted(unknown)}.")
        for split, stats in by_split.items():
            if "mean" not in stats:
                raise ValueError(f"results[{system!r}][{split!r}] needs a 'mean' (see mean_ci95), got {sorted(stats)}.")
    in_distribution = [split for split, meta in splits.items() if not meta["ood"]]
    ood = [split for split, meta in splits.items() if meta["ood"]]
    return in_distribution, ood
