"""Evaluation for the ICLM benchmarks: local ``evaluate`` modules and candidate scoring.

* ``load_metric("exact_match_accuracy")`` -- generated answers vs references (first word/letter);
* ``load_metric("choice_accuracy")`` -- best-scored candidate vs the right one;
* :func:`score_choices` -- candidate log-likelihoods from any causal LM, for choice accuracy;
* :func:`normalize_answer` -- the normalisation exact match uses.

The metrics are loaded from their folders in this package (the Hub is offline).
"""

from __future__ import annotations

from pathlib import Path

from .normalization import normalize_answer

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("exact_match_accuracy", "choice_accuracy")

__all__ = ["METRIC_NAMES", "load_metric", "metric_path", "normalize_answer", "score_choices"]


def metric_path(name: str) -> str:
    """Folder of a metric shipped with iclm, to pass to ``evaluate.load``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}.")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a metric shipped with iclm (offline, from the package folder)."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


def __getattr__(name: str):
    if name == "score_choices":
        from .scoring import score_choices

        return score_choices
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
