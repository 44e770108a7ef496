"""``iclm interventions``: answer changes under forced domain modules and ablated modules (iclm/experiment/interventions.py)."""

import json
import math
import os
import random
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, word_tokenizer

from iclm.cli import main
from iclm.experiment.interventions import (analyse_rows, greedy_answers, parse_split, summarise_split, wilson)
from iclm.metrics.normalization import normalize_answer
from modeling_iclm import IclmForCausalLM

WORDS = [f"{p}{i}" for p in "ab" for i in range(12)] + [f"x{i}" for i in range(3)]


def _rows(count=24, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        domain = i % 2
        prompt = " ".join(f"{'ab'[domain]}{rng.randrange(12)}" for _ in range(rng.randint(4, 8))) + " "
        rows.append({"prompt": prompt, "answer": f"x{rng.randrange(3)}", "choices": ["x0", "x1", "x2"],
                     "domain_id": domain})
    return rows


@torch.no_grad()
def _model(mix: str):
    """A 2-domain ICLM whose aggregation reads only one module: ``mix="invariant"`` ([I, 0]: the answer provably
    does not depend on any domain module) or ``"domain"`` ([0, I]: it is the routed domain module's answer).
    The domain modules get large distinct LoRA weights, the invariant module none (it is the base)."""
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0).eval()
    generator = torch.Generator().manual_seed(0)
    for routed in model.lora.values():
        for name, pair in routed.adapters.items():
            if name != "invariant":
                pair.lora_A.copy_(torch.randn(pair.lora_A.shape, generator=generator))
                pair.lora_B.copy_(torch.randn(pair.lora_B.shape, generator=generator) * 2.0)
    hidden = model.config.text_config.hidden_size
    eye, zero = torch.eye(hidden), torch.zeros(hidden, hidden)
    weight = torch.cat([eye, zero], 1) if mix == "invariant" else torch.cat([zero, eye], 1)
    model.model.aggregation.weight.copy_(weight)
    return model


def _normalised(texts):
    return [normalize_answer(t) for t in texts]


def test_answers_that_read_only_the_invariant_module_never_change_with_the_domain_module():
    model, tokenizer, rows = _model("invariant"), word_tokenizer(WORDS), _rows()
    record = analyse_rows(model, tokenizer, rows, batch_size=8, max_length=64)
    summary = summarise_split([record], num_domains=2)
    changed = summary["changed"]
    assert changed["force_domain_0"]["share"] == 0 and changed["force_domain_1"]["share"] == 0
    assert changed["any_other_domain"]["share"] == 0
    assert changed["invariant_only"]["share"] == 0  # the domain module ablated: nothing it did is lost
    # The invariant module ablated: the routed domain module alone, which differs from the base here.
    alone = _normalised(greedy_answers(model, tokenizer, rows, max_length=64, module="domain"))
    expected = sum(a != b for a, b in zip(alone, record["answers"]["routed"])) / len(rows)
    assert expected > 0.3
    assert changed["domain_only"]["share"] == pytest.approx(expected)


def test_answers_that_read_only_the_domain_module_change_as_that_module_alone_says():
    model, tokenizer, rows = _model("domain"), word_tokenizer(WORDS), _rows()
    record = analyse_rows(model, tokenizer, rows, batch_size=8, max_length=64)
    summary = summarise_split([record], num_domains=2)
    changed, routed = summary["changed"], record["answers"]["routed"]
    assert changed["domain_only"]["share"] == 0  # the invariant module ablated: it contributed nothing
    for k in (0, 1):  # forcing module k = module k alone (another code path: module=k)
        alone = _normalised(greedy_answers(model, tokenizer, rows, max_length=64, module=k))
        flags = [a != b for a, b in zip(alone, routed)]
        assert changed[f"force_domain_{k}"]["share"] == pytest.approx(sum(flags) / len(rows))
        assert not any(flag for flag, route in zip(flags, record["routes"]) if route == k)  # routed there already
    assert changed["any_other_domain"]["share"] > 0.3
    base = _normalised(greedy_answers(model, tokenizer, rows, max_length=64, module="base"))  # invariant == base
    assert changed["invariant_only"]["share"] == pytest.approx(sum(a != b for a, b in zip(base, routed)) / len(rows))
    assert changed["invariant_only"]["share"] > 0.3


def test_wilson_interval_and_pooled_and_per_model_shares():
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert all(math.isnan(v) for v in wilson(0, 0))
    records = [  # two models, four rows: routes and change flags made up
        {"routes": [0, 0, 1, 1], "correct": {"routed": [1, 0, 1, 0], "force_domain_0": [1] * 4, "force_domain_1": [0] * 4},
         "changed": {"force_domain_0": [False, False, True, False], "force_domain_1": [True, False, False, False]}},
        {"routes": [1, 1, 1, 1], "correct": {"routed": [1] * 4, "force_domain_0": [1] * 4, "force_domain_1": [1] * 4},
         "changed": {"force_domain_0": [True, True, False, False], "force_domain_1": [False] * 4}},
    ]
    summary = summarise_split(records, num_domains=2)
    assert summary["route_shares"] == {"0": 0.25, "1": 0.75}
    assert summary["changed"]["force_domain_0"]["share"] == 3 / 8
    assert summary["changed"]["force_domain_0"]["counterfactual"]["share"] == 3 / 6  # rows routed to 1
    assert summary["changed"]["force_domain_1"]["counterfactual"]["share"] == 1 / 2  # rows routed to 0
    assert summary["changed"]["any_other_domain"]["share"] == 4 / 8
    assert summary["changed"]["force_domain_0"]["over_models"]["values"] == [0.25, 0.5]
    assert summary["accuracy"]["routed"] == 6 / 8


def test_split_names_are_checked():
    assert parse_split("raven_symbolic_in_center_single_out_center_single") == (
        "raven", "symbolic", "in_center_single_out_center_single")
    with pytest.raises(ValueError, match="Unknown split 'acre_text_center_single'"):
        parse_split("acre_text_center_single")


def _smoke_base():
    from iclm.experiment.default_base import build_default_base
    from iclm.experiment.runner import training_texts

    cache = os.environ.get("ICLM_TEST_CACHE", os.path.join(tempfile.gettempdir(), "iclm-test-cache"))
    return build_default_base(training_texts(0), cache_dir=cache, preset="smoke", log=lambda message: None)


def test_the_command_writes_results_markdown_and_a_figure(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from conftest import make_trained

    base = _smoke_base()
    models = []
    for seed in (0, 1):  # two "seeds": the over-models intervals exist
        model = make_trained(IclmForCausalLM.from_base(AutoModelForCausalLM.from_pretrained(base), num_domains=2),
                             seed=seed + 1)
        model.save_pretrained(tmp_path / f"m{seed}")
        models.append(str(tmp_path / f"m{seed}"))
    out = tmp_path / "out"
    argv = ["interventions", "--model", *models, "--out", str(out), "--splits", "acre_symbolic_iid",
            "raven_symbolic_center_single", "--rows", "4"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_domains"] == 2 and results["splits"] == ["acre_symbolic_iid", "raven_symbolic_center_single"]
    for split, entry in results["summary"].items():
        assert entry["rows"] == 4 and entry["models"] == 2
        assert set(entry["changed"]) == {"force_domain_0", "force_domain_1", "invariant_only", "domain_only",
                                         "any_other_domain"}
        for cell in entry["changed"].values():
            assert 0 <= cell["ci95_low"] <= cell["share"] <= cell["ci95_high"] <= 1 and cell["count"] == 8
            assert cell["over_models"]["n"] == 2
    assert len(results["per_model_summary"]) == 2
    assert results["per_model_summary"][0]["acre_symbolic_iid"]["changed"]["force_domain_0"]["count"] == 4
    markdown = (out / "results.md").read_text()
    assert "## Per model: routes and forced modules" in markdown
    assert "| acre_symbolic_iid |" in markdown and "invariant alone (domain ablated)" in markdown
    assert (out / "figures" / "interventions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0  # an earlier output is replaced
    assert main(["interventions", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 1
    assert "no saved model there" in capsys.readouterr().err
