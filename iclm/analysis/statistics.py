"""Means with Student-t 95% confidence intervals over repeated runs (seeds).

A run count of 3-5 seeds is typical, so the normal quantile (1.96) would understate the
uncertainty badly (t = 4.30 for n = 3). scipy gives the exact quantile when installed; without
it a table covers n <= 31 and Hill's expansion (accurate to 1e-7 beyond) the rest.

n = 1 gives ``nan`` bounds and half-width, not mean ± 0: one run says nothing about the spread,
and a zero-width interval would claim a certainty that was never measured.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

# t_{0.975} quantiles for df = 1..30 (scipy.stats.t.ppf(0.975, df), 6 decimals).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)
_Z975 = 1.959963984540054


def _t975_fallback(df: int) -> float:
    """t_{0.975}(df) from the table, or Hill's (Cornish-Fisher) expansion in 1/df for df > 30."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def t_quantile_975(df: int) -> float:
    """The two-sided 95% Student-t critical value for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_quantile_975 needs df >= 1, got {df}.")
    try:
        from scipy.stats import t
    except ImportError:
        return _t975_fallback(df)
    return float(t.ppf(0.975, df))


def mean_ci95(values: Iterable[float]) -> dict:
    """Mean and 95% CI of the mean of independent runs: ``mean ± t_{0.975, n-1} · s / √n``.

    Returns ``{"mean", "ci95_low", "ci95_high", "half_width", "n", "values"}`` (plain floats and a
    list, so it serialises to JSON); for n = 1 the interval fields are ``nan`` (see module doc).
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"mean_ci95 needs a non-empty 1-D sequence of numbers, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"mean_ci95 got non-finite values: {array.tolist()}.")
    n = int(array.size)
    mean = float(array.mean())
    half = math.nan if n == 1 else t_quantile_975(n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "half_width": half, "n": n,
            "values": array.tolist()}


def summarise_runs(runs: Mapping[str, Mapping[str, Iterable[float]]]) -> dict:
    """``{system: {split: [score per seed]}}`` → ``{system: {split: mean_ci95(...)}}``: the ``results``
    structure that :func:`plot_accuracy_by_split` and :func:`results_markdown` take."""
    return {system: {split: mean_ci95(scores) for split, scores in by_split.items()} for system, by_split in runs.items()}
