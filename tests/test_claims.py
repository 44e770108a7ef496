"""The claim verdicts (iclm.analysis.claims) on synthetic per-seed results: each verdict is reachable and
follows the documented rule (paired per-seed differences, 95% t intervals, the learning gate)."""

import math

import pytest

from iclm.analysis.claims import (
    CLAIMS, INCONCLUSIVE, LEARNED_MARGIN, NOT_SUPPORTED, SUPPORTED, best_blind, claim_modules_match, claim_ood_gain,
    claim_partial_correlation, claims_markdown, evaluate_claims, learned_pairs, routed_cka,
)

SPLITS = {
    "acre_symbolic_iid": {"ood": False, "task": "acre", "rendering": "symbolic"},
    "acre_symbolic_comp": {"ood": True, "task": "acre", "rendering": "symbolic"},
    "raven_symbolic_center_single": {"ood": False, "task": "raven", "rendering": "symbolic"},
    "raven_symbolic_distribute_four": {"ood": True, "task": "raven", "rendering": "symbolic"},
}
BASELINES = {
    "acre_symbolic_iid": {"chance": 1 / 3, "majority": 0.37, "answer_set_only": None},
    "acre_symbolic_comp": {"chance": 1 / 3, "majority": 0.38, "answer_set_only": None},
    # The real RAVEN candidate sets: a context-blind rule solves them, so no accuracy shows learning there.
    "raven_symbolic_center_single": {"chance": 0.125, "majority": 0.15, "answer_set_only": 1.0},
    "raven_symbolic_distribute_four": {"chance": 0.125, "majority": 0.18, "answer_set_only": 1.0},
}


def per_seed(table):
    """{system: {split: [value per seed]}} -> {system: {seed: {split: value}}}."""
    out = {}
    for system, by_split in table.items():
        seeds = len(next(iter(by_split.values())))
        out[system] = {s: {split: values[s] for split, values in by_split.items()} for s in range(seeds)}
    return out


def systems(iclm_ood, lora_ood, iid=(0.70, 0.72, 0.68), raven=(0.99, 1.0, 0.98)):
    common = {"acre_symbolic_iid": list(iid), "raven_symbolic_center_single": list(raven),
              "raven_symbolic_distribute_four": [0.2, 0.2, 0.2]}
    return per_seed({"iclm": {**common, "acre_symbolic_comp": list(iclm_ood)},
                     "single_lora": {**common, "acre_symbolic_comp": list(lora_ood)}})


def test_best_blind_takes_the_strongest_context_blind_rule():
    assert best_blind(BASELINES["acre_symbolic_iid"]) == 0.37
    assert best_blind(BASELINES["raven_symbolic_center_single"]) == 1.0
    with pytest.raises(ValueError):
        best_blind({})


def test_learning_gate_ignores_splits_a_context_blind_rule_solves():
    results = systems([0.5] * 3, [0.5] * 3)
    learned = learned_pairs(results, SPLITS, BASELINES, "iclm")
    assert set(learned) == {("acre", "symbolic")}  # RAVEN at 99% is the answer-set shortcut, not learning
    assert learned[("acre", "symbolic")]["split"] == "acre_symbolic_iid"
    weak = systems([0.5] * 3, [0.5] * 3, iid=(0.37 + LEARNED_MARGIN - 0.01,) * 3)
    assert learned_pairs(weak, SPLITS, BASELINES, "iclm") == {}
    noisy = systems([0.5] * 3, [0.5] * 3, iid=(0.30, 0.75, 0.40))  # mean 0.48 >= 0.47 but the CI reaches the floor
    assert learned_pairs(noisy, SPLITS, BASELINES, "iclm") == {}


def test_ood_claim_supported_when_every_seed_gains():
    claim = claim_ood_gain(systems([0.60, 0.62, 0.58], [0.50, 0.51, 0.49]), SPLITS, BASELINES)
    assert claim["verdict"] == SUPPORTED
    d = claim["evidence"]["difference"]
    assert d["differences"] == pytest.approx([0.10, 0.11, 0.09]) and d["ci95_low"] > 0
    assert claim["evidence"]["splits"] == ["acre_symbolic_comp"]  # RAVEN o.o.d. is not measured: never learned


def test_ood_claim_not_supported_when_the_gain_is_excluded():
    assert claim_ood_gain(systems([0.50, 0.495, 0.505], [0.50, 0.50, 0.50]), SPLITS, BASELINES)["verdict"] == NOT_SUPPORTED
    assert claim_ood_gain(systems([0.40, 0.41, 0.39], [0.50, 0.50, 0.50]), SPLITS, BASELINES)["verdict"] == NOT_SUPPORTED


def test_ood_claim_inconclusive_when_seeds_disagree_or_nothing_was_learned():
    noisy = claim_ood_gain(systems([0.60, 0.45, 0.52], [0.50, 0.50, 0.50]), SPLITS, BASELINES)
    assert noisy["verdict"] == INCONCLUSIVE
    d = noisy["evidence"]["difference"]
    assert d["ci95_low"] < 0 < d["ci95_high"]
    floor = claim_ood_gain(systems([0.9] * 3, [0.1] * 3, iid=(0.38, 0.37, 0.39)), SPLITS, BASELINES)
    assert floor["verdict"] == INCONCLUSIVE and "learned" in floor["evidence"]["reason"]
    one_seed = per_seed({name: {split: [values[0]] for split, values in table.items()}
                         for name, table in {"iclm": {"acre_symbolic_iid": [0.9], "acre_symbolic_comp": [0.9],
                                                      "raven_symbolic_center_single": [0.2],
                                                      "raven_symbolic_distribute_four": [0.2]},
                                             "single_lora": {"acre_symbolic_iid": [0.9], "acre_symbolic_comp": [0.1],
                                                             "raven_symbolic_center_single": [0.2],
                                                             "raven_symbolic_distribute_four": [0.2]}}.items()})
    # One seed cannot pass the gate either (its interval is undefined).
    assert claim_ood_gain(one_seed, SPLITS, BASELINES)["verdict"] == INCONCLUSIVE
    assert claim_ood_gain({}, SPLITS, BASELINES)["verdict"] == INCONCLUSIVE


def modules(invariant, domain, oracle=(0.70, 0.72, 0.68)):
    def system(iid):
        return {"acre_symbolic_iid": list(iid), "acre_symbolic_comp": [v - 0.1 for v in iid],
                "raven_symbolic_center_single": [1.0] * 3, "raven_symbolic_distribute_four": [0.2] * 3}
    return per_seed({"iclm_oracle": system(oracle), "iclm_invariant_only": system(invariant),
                     "iclm_domain_only": system(domain)})


def test_modules_match_each_verdict():
    match = claim_modules_match(modules((0.70, 0.73, 0.67), (0.71, 0.72, 0.69)), SPLITS, BASELINES)
    assert match["verdict"] == SUPPORTED
    assert {m["outcome"] for m in match["evidence"]["modules"].values()} == {"matches"}
    assert match["evidence"]["splits"] == ["acre_symbolic_iid", "acre_symbolic_comp"]
    differs = claim_modules_match(modules((0.70, 0.73, 0.67), (0.55, 0.56, 0.54)), SPLITS, BASELINES)
    assert differs["verdict"] == NOT_SUPPORTED
    assert differs["evidence"]["modules"]["iclm_domain_only"]["outcome"] == "differs"
    unsure = claim_modules_match(modules((0.70, 0.73, 0.67), (0.60, 0.75, 0.70)), SPLITS, BASELINES)
    assert unsure["verdict"] == INCONCLUSIVE
    floor = claim_modules_match(modules((0.37,) * 3, (0.37,) * 3, oracle=(0.37, 0.38, 0.36)), SPLITS, BASELINES)
    assert floor["verdict"] == INCONCLUSIVE and "floor" in floor["evidence"]["reason"]


def table(values):
    return {"splits": ["a", "b"], "modules": ["routed", "domain_0"], "n": [40, 40],
            "cka": [[0.9, 0.9], [0.9, 0.9]], "cka_debiased": [[v, 0.1] for v in values], "mi": [[0, 0], [0, 0]]}


def test_partial_correlation_each_verdict():
    assert routed_cka(table([0.4, float("nan")])) == pytest.approx(0.4)
    partly = claim_partial_correlation({0: table([0.5, 0.6]), 1: table([0.55, 0.5]), 2: table([0.6, 0.5])})
    assert partly["verdict"] == SUPPORTED and partly["evidence"]["cka"]["mean"] == pytest.approx((0.55 + 0.525 + 0.55) / 3)
    same = claim_partial_correlation({0: table([0.97, 0.99]), 1: table([0.98, 0.99]), 2: table([0.99, 0.97])})
    assert same["verdict"] == NOT_SUPPORTED and same["evidence"]["reading"] == "the same contribution"
    independent = claim_partial_correlation({0: table([0.01, 0.0]), 1: table([0.02, -0.01]), 2: table([0.0, 0.01])})
    assert independent["verdict"] == NOT_SUPPORTED and independent["evidence"]["reading"] == "independent"
    spread = claim_partial_correlation({0: table([0.2, 0.2]), 1: table([0.95, 0.95]), 2: table([0.6, 0.6])})
    assert spread["verdict"] == INCONCLUSIVE
    assert claim_partial_correlation({0: table([0.5, 0.5])})["verdict"] == INCONCLUSIVE


def test_evaluate_claims_and_markdown():
    results = {**systems([0.60, 0.62, 0.58], [0.50, 0.51, 0.49]), **modules((0.70, 0.73, 0.67), (0.71, 0.72, 0.69))}
    independence = {0: table([0.5, 0.6]), 1: table([0.55, 0.5]), 2: table([0.6, 0.5])}
    claims = evaluate_claims(results, SPLITS, BASELINES, independence)
    assert list(claims) == list(CLAIMS)
    assert [claims[name]["verdict"] for name in CLAIMS] == [SUPPORTED] * 3
    assert all(claim["claim"] for claim in claims.values())
    text = claims_markdown(claims)
    assert text.count("**supported**") == 3 and "+10.0 points" in text
    without = evaluate_claims(results, SPLITS, BASELINES, None)
    assert without["modules_partly_correlated"]["verdict"] == INCONCLUSIVE
    assert "iclm was not analysed" in claims_markdown(without)
    with pytest.raises(ValueError, match="lacks"):
        evaluate_claims(results, {"x": {"ood": True}}, BASELINES)
    assert math.isfinite(claims["ood_iclm_beats_single_lora"]["evidence"]["difference"]["ci95_high"])


def _contribution_tables(trained: bool, seeds=range(5)):
    """The experiment's own independence probe on a tiny ICLM, per seed: untrained, or with random independent
    LoRA weights (``make_trained``: the modules' changes are independent noise)."""
    from types import SimpleNamespace

    from conftest import make_trained, tiny_llama, two_domain_rows, vocabulary, word_tokenizer
    from iclm.experiment.probes import independence_probe
    from modeling_iclm import IclmForCausalLM

    tokenizer = word_tokenizer(vocabulary())
    rows = two_domain_rows(24)
    preset = SimpleNamespace(eval_max_length=64, eval_batch_size=12, analysis_rows=24)
    tables = {}
    for seed in seeds:
        model = IclmForCausalLM.from_base(tiny_llama(seed), num_domains=2).eval()
        if trained:
            make_trained(model, seed=seed + 10)
        tables[seed] = independence_probe(model, tokenizer, {"acre_symbolic_iid": rows[:12],
                                                             "acre_symbolic_comp": rows[12:]}, preset)
    return tables


FLOOR = per_seed({system: {split: [0.37, 0.38, 0.36, 0.37, 0.37] for split in SPLITS}  # 5 seeds, nothing learned
                  for system in ("iclm", "single_lora", "iclm_oracle", "iclm_invariant_only", "iclm_domain_only")})


def test_partial_correlation_nulls_never_give_a_verdict():
    """An untrained ICLM adds nothing (its contributions' CKA is undefined), and modules whose changes are independent
    noise learned nothing: neither may ever read "supported" nor "not supported"."""
    untrained = _contribution_tables(trained=False)
    assert all(math.isnan(routed_cka(table)) for table in untrained.values())
    noise = _contribution_tables(trained=True)
    assert all(math.isfinite(routed_cka(table)) for table in noise.values())
    for tables in (untrained, noise):
        claim = evaluate_claims(FLOOR, SPLITS, BASELINES, tables)["modules_partly_correlated"]
        assert claim["verdict"] == INCONCLUSIVE, claim


def test_partial_correlation_is_decided_only_once_iclm_learned():
    learned = {**systems([0.60, 0.62, 0.58], [0.50, 0.51, 0.49]), **modules((0.70, 0.73, 0.67), (0.71, 0.72, 0.69))}
    partly = {0: table([0.5, 0.6]), 1: table([0.55, 0.5]), 2: table([0.6, 0.5])}
    assert evaluate_claims(learned, SPLITS, BASELINES, partly)["modules_partly_correlated"]["verdict"] == SUPPORTED
    gated = evaluate_claims(FLOOR, SPLITS, BASELINES, partly)["modules_partly_correlated"]
    assert gated["verdict"] == INCONCLUSIVE and "learned no task" in gated["evidence"]["reason"]
