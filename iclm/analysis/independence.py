"""How independent the invariant and domain modules stay at inference.

ICLM trains the invariant module to share little information with the routed domain module (the
MI loss). At test time we measure the same pairing two ways on paired hidden states [n, H]:

* linear CKA (Kornblith et al. 2019): representational similarity, invariant to rotations and
  isotropic scaling of either side; 1 = the same representation up to those, 0 = no linear relation.
  Plain linear CKA is biased upwards when n is not much larger than H (independent random
  features with n = 200, H = 500 score ~0.7), so the debiased estimator (the unbiased HSIC of
  Song et al. 2012, as in Nguyen et al. 2021) is reported beside it; its expectation is ~0 for
  independent features at any n, and it can be slightly negative;
* the training objective's own MI estimate (``mutual_information_iclm.mutual_information``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from mutual_information_iclm import mutual_information

ROUTED = "routed"  # column name of the routed domain module in independence tables


def as_features(x, name: str = "x") -> np.ndarray:
    """A float64 [n, d] matrix from a numpy array, list or torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be an [n, d] feature matrix, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values.")
    return array


def _paired(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_features(x, "x"), as_features(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares paired rows: x has {x.shape[0]} rows, y has {y.shape[0]}.")
    return x, y


def _unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC of two n×n Gram matrices (n >= 4)."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    k_rows, l_rows = k.sum(1), l.sum(1)
    value = (k * l).sum() + k_rows.sum() * l_rows.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k_rows @ l_rows)
    return float(value / (n * (n - 3)))


def linear_cka(x, y, *, debiased: bool = False) -> float:
    """Linear CKA between paired feature matrices x [n, d1] and y [n, d2], in float64.

    ``CKA = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on column-centred features, computed through the
    n×n Gram matrices when n < d (cheaper, same value). ``debiased=True`` uses the unbiased HSIC
    (needs n >= 4). Returns ``nan`` when one side is constant (CKA is undefined there).
    """
    x, y = _paired(x, y)
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f"linear_cka needs at least {4 if debiased else 2} rows{' (debiased)' if debiased else ''}, got {n}.")
    if np.ptp(x, axis=0).max(initial=0.0) == 0 or np.ptp(y, axis=0).max(initial=0.0) == 0:
        return math.nan
    x = x - x.mean(0)
    y = y - y.mean(0)
    if debiased:
        k, l = x @ x.T, y @ y.T
        xy, xx, yy = _unbiased_hsic(k, l), _unbiased_hsic(k, k), _unbiased_hsic(l, l)
        return xy / math.sqrt(xx * yy) if xx > 0 and yy > 0 else math.nan
    if n < max(x.shape[1], y.shape[1]):
        k, l = x @ x.T, y @ y.T
        xy, xx, yy = (k * l).sum(), (k * k).sum(), (l * l).sum()
    else:
        xy = np.square(y.T @ x).sum()
        xx, yy = np.square(x.T @ x).sum(), np.square(y.T @ y).sum()
    return float(xy / math.sqrt(xx * yy))


def _named_modules(domain_modules) -> dict:
    if domain_modules is None:
        return {}
    if isinstance(domain_modules, Mapping):
        return dict(domain_modules)
    if isinstance(domain_modules, Sequence) or hasattr(domain_modules, "__len__"):
        return {f"domain_{k}": states for k, states in enumerate(domain_modules)}
    raise ValueError("domain_modules must be a mapping {name: [n, H] states} or a sequence of [n, H] states.")


def module_independence(invariant, domain=None, domain_modules=None) -> dict:
    """CKA, debiased CKA and MI between the invariant module's states and each domain module's.

    ``invariant`` and ``domain`` are paired [n, H] last hidden states (same inputs and positions) of
    the invariant and the *routed* domain module; ``domain_modules`` optionally adds each domain
    module run on every input (``{name: [n, H]}`` or a list, named ``domain_k``). Returns
    ``{"n": n, "cka": {module: float}, "cka_debiased": {...}, "mi": {...}}`` with the routed module
    under ``"routed"``; debiased CKA is ``nan`` for n < 4.
    """
    inv = as_features(invariant, "invariant")
    modules = ({ROUTED: domain} if domain is not None else {}) | _named_modules(domain_modules)
    if not modules:
        raise ValueError("module_independence needs the routed domain states or domain_modules.")
    report = {"n": int(inv.shape[0]), "cka": {}, "cka_debiased": {}, "mi": {}}
    for name, states in modules.items():
        states = as_features(states, name)
        if states.shape != inv.shape:
            raise ValueError(f"{name} states have shape {states.shape}, the invariant states {inv.shape}: they must pair up.")
        report["cka"][name] = linear_cka(inv, states)
        report["cka_debiased"][name] = linear_cka(inv, states, debiased=True) if inv.shape[0] >= 4 else math.nan
        report["mi"][name] = float(mutual_information(torch.from_numpy(inv), torch.from_numpy(states)))
    return report


_STATE_KEYS = {"invariant", "domain", "domain_modules"}


def independence_table(states_by_split: Mapping[str, Mapping]) -> dict:
    """:func:`module_independence` for every test split, laid out as split × module tables.

    ``states_by_split``: ``{split: {"invariant": [n, H], "domain": [n, H], "domain_modules": ...}}``
    (``domain`` or ``domain_modules`` may be absent). Returns ``{"splits": [...], "modules": [...],
    "n": [...], "cka": [[...]], "cka_debiased": [[...]], "mi": [[...]]}``, rows in split order,
    columns ``"routed"`` then the other modules in first-seen order; ``nan`` where a split lacks a
    module. This is what :func:`plot_independence_heatmap` draws.
    """
    if not states_by_split:
        raise ValueError("independence_table needs at least one split.")
    reports = {}
    for split, states in states_by_split.items():
        unknown = set(states) - _STATE_KEYS
        if unknown or "invariant" not in states:
            raise ValueError(f"split {split!r}: expected keys {sorted(_STATE_KEYS)} with 'invariant', got {sorted(states)}.")
        reports[split] = module_independence(states["invariant"], states.get("domain"), states.get("domain_modules"))
    modules = list(dict.fromkeys(name for report in reports.values() for name in report["cka"]))
    table = {"splits": list(reports), "modules": modules, "n": [report["n"] for report in reports.values()]}
    for metric in ("cka", "cka_debiased", "mi"):
        table[metric] = [[report[metric].get(name, math.nan) for name in modules] for report in reports.values()]
    return table
