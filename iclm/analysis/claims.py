"""Verdicts on the paper's three claims, computed from the per-seed results (never written by hand).

Every verdict is ``"supported"``, ``"not supported"`` or ``"inconclusive"``, with the numbers it was
decided on in ``evidence``. The rules work on *paired* per-seed differences: seed ``s`` of two systems
shares the base, the training data, their order and the test rows, so the difference within a seed
removes that shared variation, and the 95% Student-t interval of the mean difference
(:func:`iclm.analysis.statistics.mean_ci95`) is the uncertainty that decides. Overlapping per-system
intervals would decide less often and less correctly.

Gate: a claim about reasoning is only tested where the systems reasoned. A (task, rendering) pair is
*learned* by a system when on one of its in-distribution splits the system's mean accuracy is at least
:data:`LEARNED_MARGIN` above the split's best context-blind baseline (chance, majority answer and, for
RAVEN, the answer-set-only rule) and the lower end of its 95% interval is above that baseline. A split
that a context-blind rule solves (the real RAVEN candidate sets: answer-set-only 100%) can never pass,
whatever the accuracy. Out-of-distribution splits of unlearned pairs measure nothing but the floor.

1. ``ood_iclm_beats_single_lora`` -- o.o.d., ICLM is better than the single LoRA fine-tune.
   Splits: the o.o.d. splits of the (task, rendering) pairs that both ``iclm`` and ``single_lora``
   learned. Per seed, d = mean over those splits of (iclm − single_lora); interval of mean d.
   *supported*: low > 0. *not supported*: high < :data:`GAIN_MARGIN` (the data exclude an o.o.d. gain of
   that size: ICLM is no better, or worse). *inconclusive*: otherwise, with fewer than 2 seeds, or with
   no learned pair.
2. ``single_modules_match_oracle`` -- the trained ICLM's invariant module alone and its routed domain
   module alone each match the oracle-routed ICLM.
   Splits: every split (i.d. and o.o.d.) of the pairs that ``iclm_oracle`` learned. Per module and seed,
   d = mean over those splits of (module − iclm_oracle). A module *matches* when the interval lies inside
   ±:data:`MATCH_MARGIN` and *differs* when it lies entirely outside. *supported*: both modules match.
   *not supported*: one module differs. *inconclusive*: otherwise (or < 2 seeds, no learned pair).
3. ``modules_partly_correlated`` -- at inference what the invariant module and the routed domain module
   add to the base is neither independent nor the same.
   Per seed, c = mean over every test split of the debiased linear CKA between the two modules'
   *contributions*: each module's last hidden state minus the frozen base's, at the position that predicts
   the answer (:func:`iclm.experiment.probes.independence_probe`; raw states share the base and look alike
   whatever was learned). Gate: only when ``iclm`` learned a pair in distribution (else its contributions
   are untrained noise, whose independence says nothing about the method).
   *supported*: the interval of mean c lies inside (:data:`CKA_INDEPENDENT`, :data:`CKA_IDENTICAL`).
   *not supported*: it lies below :data:`CKA_INDEPENDENT` (independent) or above :data:`CKA_IDENTICAL`
   (one representation). *inconclusive*: otherwise, ungated, or < 2 seeds.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .statistics import mean_ci95

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
CLAIMS = ("ood_iclm_beats_single_lora", "single_modules_match_oracle", "modules_partly_correlated")
CLAIM_TEXT = {
    "ood_iclm_beats_single_lora": "Out of distribution, ICLM beats the single fine-tuned LoRA.",
    "single_modules_match_oracle": "The invariant module alone and the routed domain module alone match the "
                                   "oracle-routed ICLM.",
    "modules_partly_correlated": "The invariant and domain modules stay partly correlated at inference (neither "
                                 "independent nor the same representation).",
}
LEARNED_MARGIN = 0.10  # accuracy above the best context-blind baseline that counts as having learned a task
GAIN_MARGIN = 0.02  # an o.o.d. gain smaller than this (2 points) is no gain worth the name
MATCH_MARGIN = 0.05  # two systems within 5 points (whole interval) match
CKA_INDEPENDENT = 0.10  # debiased CKA below this: independent representations
CKA_IDENTICAL = 0.90  # debiased CKA above this: the same representation


def best_blind(baselines: Mapping) -> float:
    """The best context-blind accuracy of a split: max of chance, majority and answer-set-only (when known)."""
    values = [baselines.get(key) for key in ("chance", "majority", "answer_set_only")]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        raise ValueError(f"A split's baselines need at least 'chance' or 'majority', got {dict(baselines)}.")
    return max(values)


def _seed_values(per_seed: Mapping, system: str, split: str, seeds: Sequence) -> list[float]:
    return [float(per_seed[system][seed][split]) for seed in seeds]


def _common_seeds(per_seed: Mapping, systems: Iterable[str]) -> list:
    sets = [set(per_seed.get(system, {})) for system in systems]
    return sorted(set.intersection(*sets)) if sets else []


def learned_pairs(per_seed: Mapping, splits: Mapping, baselines: Mapping, system: str) -> dict:
    """``{(task, rendering): evidence}`` of the pairs ``system`` learned (see the module doc), evidence
    being the in-distribution split that shows it, its mean, CI low and best blind baseline."""
    learned = {}
    seeds = sorted(per_seed.get(system, {}))
    if not seeds:
        return learned
    for split, meta in splits.items():
        if meta["ood"] or any(split not in per_seed[system][seed] for seed in seeds):
            continue
        stats = mean_ci95(_seed_values(per_seed, system, split, seeds))
        blind = best_blind(baselines[split])
        low = stats["ci95_low"] if math.isfinite(stats["ci95_low"]) else -math.inf
        if stats["mean"] >= blind + LEARNED_MARGIN and low > blind:
            pair = (meta["task"], meta["rendering"])
            if pair not in learned or stats["mean"] - blind > learned[pair]["above_blind"]:
                learned[pair] = {"split": split, "mean": stats["mean"], "ci95_low": stats["ci95_low"],
                                 "best_blind": blind, "above_blind": stats["mean"] - blind}
    return learned


def _paired_difference(per_seed: Mapping, system: str, reference: str, split_names: Sequence[str]) -> dict:
    seeds = _common_seeds(per_seed, (system, reference))
    differences = [float(np.mean([per_seed[system][s][split] - per_seed[reference][s][split] for split in split_names]))
                   for s in seeds]
    stats = mean_ci95(differences) if differences else None
    return {"seeds": seeds, "differences": differences, "mean": None if stats is None else stats["mean"],
            "ci95_low": None if stats is None else stats["ci95_low"],
            "ci95_high": None if stats is None else stats["ci95_high"], "n": len(differences)}


def _interval_known(stats: Mapping) -> bool:
    return stats["n"] >= 2 and all(stats[k] is not None and math.isfinite(stats[k]) for k in ("ci95_low", "ci95_high"))


def _pairs_text(pairs) -> list[str]:
    return sorted(f"{task}/{rendering}" for task, rendering in pairs)


def claim_ood_gain(per_seed: Mapping, splits: Mapping, baselines: Mapping, system: str = "iclm",
                   reference: str = "single_lora") -> dict:
    """Claim 1 (see the module doc): ``system`` beats ``reference`` out of distribution."""
    if system not in per_seed or reference not in per_seed:
        return {"verdict": INCONCLUSIVE, "evidence": {"reason": f"{system!r} or {reference!r} was not run."}}
    learned = set(learned_pairs(per_seed, splits, baselines, system)) & set(
        learned_pairs(per_seed, splits, baselines, reference))
    measured = [split for split, meta in splits.items() if meta["ood"] and (meta["task"], meta["rendering"]) in learned]
    evidence = {"rule": f"paired per-seed mean o.o.d. difference {system} − {reference}; supported if the 95% CI is "
                        f"above 0, not supported if it is below +{GAIN_MARGIN:.2f}",
                "learned_pairs": _pairs_text(learned), "splits": measured}
    if not measured:
        evidence["reason"] = (f"neither {system} nor {reference} (both needed) learned any task × rendering in "
                              f"distribution ({LEARNED_MARGIN:.2f} above the best context-blind baseline), so no "
                              "o.o.d. split measures generalisation")
        return {"verdict": INCONCLUSIVE, "evidence": evidence}
    stats = _paired_difference(per_seed, system, reference, measured)
    evidence["difference"] = stats
    if not _interval_known(stats):
        evidence["reason"] = "fewer than 2 paired seeds: no interval"
        return {"verdict": INCONCLUSIVE, "evidence": evidence}
    if stats["ci95_low"] > 0:
        verdict = SUPPORTED
    elif stats["ci95_high"] < GAIN_MARGIN:
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return {"verdict": verdict, "evidence": evidence}


def claim_modules_match(per_seed: Mapping, splits: Mapping, baselines: Mapping,
                        modules: Sequence[str] = ("iclm_invariant_only", "iclm_domain_only"),
                        reference: str = "iclm_oracle") -> dict:
    """Claim 2 (see the module doc): each single module matches ``reference`` within ±MATCH_MARGIN."""
    missing = [name for name in (*modules, reference) if name not in per_seed]
    if missing:
        return {"verdict": INCONCLUSIVE, "evidence": {"reason": f"not run: {missing}"}}
    learned = set(learned_pairs(per_seed, splits, baselines, reference))
    measured = [split for split, meta in splits.items() if (meta["task"], meta["rendering"]) in learned]
    evidence = {"rule": f"per module, paired per-seed mean difference module − {reference} over every split of the "
                        f"pairs {reference} learned; a module matches if its 95% CI lies within ±{MATCH_MARGIN:.2f}, "
                        "differs if it lies outside; supported if both match, not supported if one differs",
                "learned_pairs": _pairs_text(learned), "splits": measured, "modules": {}}
    if not measured:
        evidence["reason"] = (f"{reference} learned no task × rendering in distribution: every system sits at the "
                              "floor and a match would say nothing")
        return {"verdict": INCONCLUSIVE, "evidence": evidence}
    outcomes = []
    for module in modules:
        stats = _paired_difference(per_seed, module, reference, measured)
        if not _interval_known(stats):
            outcome = INCONCLUSIVE
        elif -MATCH_MARGIN < stats["ci95_low"] and stats["ci95_high"] < MATCH_MARGIN:
            outcome = "matches"
        elif stats["ci95_low"] > MATCH_MARGIN or stats["ci95_high"] < -MATCH_MARGIN:
            outcome = "differs"
        else:
            outcome = INCONCLUSIVE
        evidence["modules"][module] = {"difference": stats, "outcome": outcome}
        outcomes.append(outcome)
    if "differs" in outcomes:
        verdict = NOT_SUPPORTED
    elif all(outcome == "matches" for outcome in outcomes):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return {"verdict": verdict, "evidence": evidence}


def routed_cka(independence: Mapping, metric: str = "cka_debiased") -> float:
    """Mean over splits of ``metric`` between the invariant and the routed domain module, from one seed's
    :func:`iclm.analysis.independence_table` (nan cells skipped; nan if none is finite)."""
    column = list(independence["modules"]).index("routed")
    values = [row[column] for row in independence[metric] if row[column] is not None and math.isfinite(row[column])]
    return float(np.mean(values)) if values else math.nan


def claim_partial_correlation(independence_per_seed: Mapping, learned: Optional[Mapping] = None) -> dict:
    """Claim 3 (see the module doc), from ``{seed: independence_table}`` of the trained ICLM's module
    contributions and the pairs it learned (:func:`learned_pairs`; ``None``: the gate is not applied)."""
    values = {seed: routed_cka(table) for seed, table in sorted(independence_per_seed.items())}
    finite = [v for v in values.values() if math.isfinite(v)]
    evidence = {"rule": f"per-seed mean debiased CKA between what the invariant and the routed domain module add to "
                        f"the base (states minus the base's) over every test split, if iclm learned a task in "
                        f"distribution; supported if its 95% CI lies inside ({CKA_INDEPENDENT}, {CKA_IDENTICAL}), "
                        "not supported if it lies below (independent) or above (the same contribution)",
                "per_seed": values}
    if learned is not None:
        evidence["learned_pairs"] = _pairs_text(learned)
        if not learned:
            evidence["reason"] = ("iclm learned no task × rendering in distribution: what its modules add is untrained "
                                  "noise, whose (in)dependence says nothing about the method")
            return {"verdict": INCONCLUSIVE, "evidence": evidence}
    if len(finite) < 2:
        evidence["reason"] = "fewer than 2 seeds with a finite CKA: no interval"
        return {"verdict": INCONCLUSIVE, "evidence": evidence}
    stats = mean_ci95(finite)
    evidence["cka"] = {key: stats[key] for key in ("mean", "ci95_low", "ci95_high", "n")}
    if CKA_INDEPENDENT < stats["ci95_low"] and stats["ci95_high"] < CKA_IDENTICAL:
        verdict = SUPPORTED
    elif stats["ci95_high"] < CKA_INDEPENDENT:
        verdict, evidence["reading"] = NOT_SUPPORTED, "independent"
    elif stats["ci95_low"] > CKA_IDENTICAL:
        verdict, evidence["reading"] = NOT_SUPPORTED, "the same contribution"
    else:
        verdict = INCONCLUSIVE
    return {"verdict": verdict, "evidence": evidence}


def evaluate_claims(per_seed: Mapping, splits: Mapping, baselines: Mapping,
                    independence_per_seed: Optional[Mapping] = None) -> dict:
    """All three verdicts.

    Args:
        per_seed: ``{system: {seed: {split: accuracy}}}``.
        splits: ``{split: {"ood": bool, "task": str, "rendering": str}}``.
        baselines: ``{split: {"chance", "majority", "answer_set_only" (or None)}}``.
        independence_per_seed: ``{seed: independence_table}`` of the trained ``iclm`` (claim 3).
    """
    for split, meta in splits.items():
        missing = {"ood", "task", "rendering"} - set(meta)
        if missing:
            raise ValueError(f"split {split!r} metadata lacks {sorted(missing)}.")
        if split not in baselines:
            raise ValueError(f"split {split!r} has no baselines.")
    claims = {
        "ood_iclm_beats_single_lora": claim_ood_gain(per_seed, splits, baselines),
        "single_modules_match_oracle": claim_modules_match(per_seed, splits, baselines),
        "modules_partly_correlated": (claim_partial_correlation(
            independence_per_seed, learned_pairs(per_seed, splits, baselines, "iclm")) if independence_per_seed
                                      else {"verdict": INCONCLUSIVE, "evidence": {"reason": "iclm was not analysed"}}),
    }
    for name, claim in claims.items():
        claim["claim"] = CLAIM_TEXT[name]
    return claims


def _format(value: Optional[float], percent: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 100:+.1f}" if percent else f"{value:.2f}"


def claims_markdown(claims: Mapping) -> str:
    """A Markdown table of the verdicts with their deciding numbers."""
    lines = ["| claim | verdict | evidence |", "|:---|:---|:---|"]
    for name in CLAIMS:
        claim = claims.get(name)
        if claim is None:
            continue
        evidence = claim["evidence"]
        if "reason" in evidence:
            text = evidence["reason"]
        elif name == "ood_iclm_beats_single_lora":
            d = evidence["difference"]
            text = (f"iclm − single_lora over {len(evidence['splits'])} o.o.d. splits of "
                    f"{', '.join(evidence['learned_pairs'])}: {_format(d['mean'])} points, 95% CI "
                    f"[{_format(d['ci95_low'])}, {_format(d['ci95_high'])}] (n={d['n']} seeds)")
        elif name == "single_modules_match_oracle":
            parts = []
            for module, result in evidence["modules"].items():
                d = result["difference"]
                parts.append(f"{module} − iclm_oracle {_format(d['mean'])} [{_format(d['ci95_low'])}, "
                             f"{_format(d['ci95_high'])}] ({result['outcome']})")
            text = f"over {len(evidence['splits'])} splits of {', '.join(evidence['learned_pairs'])}: " + "; ".join(parts)
        else:
            c = evidence["cka"]
            text = (f"debiased CKA of the contributions (invariant vs routed) {_format(c['mean'], False)}, 95% CI "
                    f"[{_format(c['ci95_low'], False)}, {_format(c['ci95_high'], False)}] (n={c['n']} seeds)"
                    + (f": {evidence['reading']}" if "reading" in evidence else ""))
        lines.append(f"| {claim.get('claim', name)} | **{claim['verdict']}** | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
