"""``iclm continual``: the continual-learning study end to end (smoke preset) and its verdict rules."""

import json
import os
import tempfile

import pytest
import torch
from safetensors.torch import load_file

from iclm.analysis.claims import VERDICTS
from iclm.cli import main
from iclm.experiment.continual import (CLAIM_TEXT, DISTRIBUTIONS, INCONCLUSIVE, NOT_SUPPORTED, PRESETS, SUPPORTED,
                                       SYSTEMS, continual_verdicts, get_preset, seed_measures,
                                       verdict_at_least, verdict_greater, verdict_within)


def _cache():
    return os.environ.get("ICLM_TEST_CACHE", os.path.join(tempfile.gettempdir(), "iclm-test-cache"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("continual") / "run"
    assert main(["continual", "--preset", "smoke", "--out", str(out), "--cache-dir", _cache()]) == 0
    return out


def test_every_output_exists_and_is_well_formed(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    preset = PRESETS["smoke"]
    assert results["seeds"] == preset.seeds and results["new"] == preset.new and results["old"] == list(preset.old)
    assert set(results["verdicts"]) == set(CLAIM_TEXT)
    assert all(entry["verdict"] in VERDICTS for entry in results["verdicts"].values())
    assert f"accuracy {results['verdicts']['iclm_forgets_less_than_lora']['verdict'].upper()};" in results["verdict_line"]
    summary = results["summary"]
    for system in SYSTEMS:
        for distribution in DISTRIBUTIONS:
            for when in ("before", "after"):
                cell = summary["accuracy"][system][distribution][when]
                assert cell["n"] == preset.seeds and 0 <= cell["mean"] <= 1
        for seed, measures in results["per_seed"].items():  # forgetting = before - after, per old distribution
            for distribution in preset.old:
                assert measures["forgetting"][system][distribution] == pytest.approx(
                    measures["before"][system][distribution] - measures["after"][system][distribution])
        for seed, measures in results["per_seed"].items():  # log-loss increase = after - before
            for distribution in preset.old:
                assert measures["nll_increase"][system][distribution] == pytest.approx(
                    measures["nll_after"][system][distribution] - measures["nll_before"][system][distribution])
            assert 0 <= measures["mean_answers_changed"][system] <= 1
        assert summary["nll"][system][preset.new]["after"]["mean"] > 0
    for system in ("iclm_unfrozen", "iclm_added", "iclm_added_anchored"):
        assert 0 <= summary["retention"][system]["mean"] <= 1
    assert set(summary["new_to_new_module"]) == {"iclm_added", "iclm_added_anchored"}
    assert "single_lora" not in summary["retention"]
    markdown = (smoke_run / "results.md").read_text()
    assert markdown.startswith("# SMOKE TEST") and results["verdict_line"] in markdown
    assert "| iclm_added |" in markdown and "figures/before_after.png" in markdown
    assert (smoke_run / "figures" / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for seed in range(preset.seeds):
        assert (smoke_run / "runs" / f"seed_{seed}.json").is_file()


def test_old_prompts_that_keep_their_module_keep_their_answers_and_likelihoods(smoke_run):
    preset = PRESETS["smoke"]
    kept = 0
    for seed in range(preset.seeds):
        record = json.loads((smoke_run / "runs" / f"seed_{seed}.json").read_text())
        for distribution in preset.old:
            before_routes = record["routes_before"]["iclm_phase1"][distribution]
            after_routes = record["routes_after"]["iclm_added"][distribution]
            for i, (a, b) in enumerate(zip(before_routes, after_routes)):
                if a == b:
                    kept += 1
                    assert (record["answers_after"]["iclm_added"][distribution][i]
                            == record["answers_before"]["iclm_phase1"][distribution][i])
                    assert record["nll_after"]["iclm_added"][distribution][i] == pytest.approx(
                        record["nll_before"]["iclm_phase1"][distribution][i], abs=1e-5)
    assert kept > 0


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_the_added_module_trains_alone_and_the_grown_model_reloads(smoke_run):
    from transformers import AutoModelForCausalLM

    models = smoke_run / "models" / "seed_0"
    before, added, unfrozen = (_weights(models / name) for name in ("iclm_phase1", "iclm_added", "iclm_unfrozen"))
    kept = [k for k in before if k != "model.router.codebook"]
    assert kept and all(torch.equal(added[k], before[k]) for k in kept)  # old adapters, invariant, router, aggregation
    assert torch.equal(added["model.router.codebook"][:3], before["model.router.codebook"])  # old centroids
    assert added["model.router.codebook"].shape[0] == 4
    assert any(".domain_3." in k for k in added) and any(not torch.equal(added[k], 0 * added[k])
                                                         for k in added if ".domain_3.lora_B" in k)
    assert any(not torch.equal(unfrozen[k], before[k]) for k in kept)  # without freezing, old parts move
    anchored = _weights(models / "iclm_added_anchored")
    assert any(not torch.equal(anchored[k], before[k]) for k in kept if ".invariant." in k)
    assert all(torch.equal(anchored[k], before[k]) for k in kept if ".invariant." not in k)
    reloaded = AutoModelForCausalLM.from_pretrained(models / "iclm_added", trust_remote_code=True)
    assert reloaded.config.num_domains == 4 and (models / "iclm_added" / "domain_3" / "adapter_config.json").is_file()


def test_a_finished_run_is_not_redone_and_other_settings_are_refused(smoke_run, capsys):
    stamp = (smoke_run / "runs" / "seed_0.json").stat().st_mtime_ns
    assert main(["continual", "--preset", "smoke", "--out", str(smoke_run), "--cache-dir", _cache()]) == 0
    assert (smoke_run / "runs" / "seed_0.json").stat().st_mtime_ns == stamp
    assert main(["continual", "--preset", "smoke", "--out", str(smoke_run), "--seeds", "3", "--cache-dir", _cache()]) == 1
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--new", "acre/symbolic"], "is one of the old ones"),
    (["--new", "acre/nothing"], "Unknown distribution"),
    (["--systems", "lora"], "Unknown system"),
    (["--seeds", "0"], "--seeds must be >= 1"),
])
def test_bad_options_are_clear_errors(tmp_path, capsys, argv, message):
    assert main(["continual", "--preset", "smoke", "--out", str(tmp_path / "o"), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_phase_two_keeps_the_codebook_and_never_restarts_centroids(tmp_path):
    from iclm.experiment.continual import phase2_arguments

    args = phase2_arguments(PRESETS["smoke"], 0, str(tmp_path))
    assert args.router_init == "random"  # k-means would overwrite the grown codebook
    assert args.dead_centroid_steps == 0  # the idle old centroids would be restarted onto new prompts


# ------------------------------------------------------------------------------------------------ verdict rules
def test_each_rule_reaches_every_verdict():
    assert verdict_greater([0.10, 0.12, 0.11])[0] == SUPPORTED
    assert verdict_greater([0.0, 0.0, 0.0])[0] == NOT_SUPPORTED  # a reduction of 2 points is excluded
    assert verdict_greater([-0.1, 0.2, 0.05])[0] == INCONCLUSIVE
    assert verdict_greater([0.3])[0] == INCONCLUSIVE  # one seed says nothing about the spread
    assert verdict_within([0.0, 0.005, -0.005])[0] == SUPPORTED
    assert verdict_within([0.2, 0.25, 0.22])[0] == NOT_SUPPORTED
    assert verdict_within([-0.19, 0.21, 0.0])[0] == INCONCLUSIVE
    assert verdict_at_least([1.0, 1.0, 0.98])[0] == SUPPORTED
    assert verdict_at_least([0.5, 0.6, 0.55])[0] == NOT_SUPPORTED
    assert verdict_at_least([0.5, 1.0, 0.95])[0] == INCONCLUSIVE


def _measures(lora, added, unfrozen, retention, gain):
    return {"mean_forgetting": {"single_lora": lora, "iclm_added": added, "iclm_unfrozen": unfrozen},
            "retention": {"iclm_added": retention}, "new_gain": {"iclm_added": gain}}


@pytest.mark.parametrize("lora, verdict", [
    ((0.30, 0.25, 0.35), SUPPORTED),  # the LoRA forgets, ICLM does not
    ((0.00, 0.01, 0.00), NOT_SUPPORTED),  # neither forgets: no reduction
    ((0.30, -0.20, 0.05), INCONCLUSIVE),  # the LoRA's forgetting varies too much over seeds
])
def test_the_verdicts_on_synthetic_seeds(lora, verdict):
    per_seed = {s: _measures(lora[s], 0.0, 0.2, 1.0, 0.1 + 0.01 * s) for s in range(3)}
    verdicts = continual_verdicts(per_seed)
    assert verdicts["iclm_forgets_less_than_lora"]["verdict"] == verdict
    assert verdicts["iclm_keeps_old_accuracy"]["verdict"] == SUPPORTED
    assert verdicts["router_keeps_old_routes"]["verdict"] == SUPPORTED
    assert verdicts["freezing_prevents_forgetting"]["verdict"] == SUPPORTED  # 0.2 more forgetting in every seed
    assert verdicts["added_module_learns_new"]["verdict"] == SUPPORTED
    assert verdicts["anchored_keeps_old_accuracy"] == {"verdict": INCONCLUSIVE,
                                                        "claim": CLAIM_TEXT["anchored_keeps_old_accuracy"],
                                                        "evidence": "not run: needs iclm_added_anchored"}
    assert continual_verdicts({0: per_seed[0]})["iclm_forgets_less_than_lora"]["verdict"] == INCONCLUSIVE


def test_seed_measures_forgetting_retention_and_the_new_module():
    preset = get_preset("smoke", systems=("single_lora", "iclm_added"))
    old, new = list(preset.old), preset.new
    record = {
        "before": {"lora_phase1": {old[0]: 0.5, old[1]: 0.2, old[2]: 0.1, new: 0.3},
                   "iclm_phase1": {old[0]: 0.4, old[1]: 0.2, old[2]: 0.1, new: 0.3}},
        "after": {"single_lora": {old[0]: 0.1, old[1]: 0.2, old[2]: 0.0, new: 0.6},
                  "iclm_added": {old[0]: 0.4, old[1]: 0.2, old[2]: 0.1, new: 0.5}},
        "routes_before": {"iclm_phase1": {old[0]: [0, 0, 1], old[1]: [1, 1, 1], old[2]: [2, 2, 2], new: [0, 0, 0]}},
        "routes_after": {"iclm_added": {old[0]: [0, 3, 1], old[1]: [1, 1, 1], old[2]: [2, 2, 2], new: [3, 3, 0]}},
    }
    measures = seed_measures(record, preset)
    assert measures["forgetting"]["single_lora"] == pytest.approx({old[0]: 0.4, old[1]: 0.0, old[2]: 0.1})
    assert measures["mean_forgetting"]["single_lora"] == pytest.approx(0.5 / 3)
    assert measures["mean_forgetting"]["iclm_added"] == 0
    assert measures["new_gain"]["iclm_added"] == pytest.approx(0.2)
    assert measures["retention"]["iclm_added"] == pytest.approx(8 / 9)
    assert measures["retention_per_distribution"]["iclm_added"][old[0]] == pytest.approx(2 / 3)
    assert measures["new_to_new_module"]["iclm_added"] == pytest.approx(2 / 3)
    assert "single_lora" not in measures["retention"]


def test_training_arguments_come_from_the_experiments(tmp_path, monkeypatch):
    """continual builds its arguments with systems._common_arguments, with the same values it always used."""
    import torch

    from iclm.experiment import continual, systems

    calls = []
    original = systems._common_arguments
    monkeypatch.setattr(systems, "_common_arguments", lambda *a: calls.append(a) or original(*a))
    args = continual._training_arguments(continual.PRESETS["smoke"], 1, 3, str(tmp_path), iclm=True, router_init="random")
    assert calls and calls[0][0].max_steps == 3
    expected = dict(per_device_train_batch_size=4, max_steps=3, learning_rate=2e-3, warmup_steps=0, seed=1,
                    data_seed=1, logging_steps=1, save_strategy="no", remove_unused_columns=False, disable_tqdm=True,
                    dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=not torch.cuda.is_available(),
                    train_sampling_strategy="group_by_length", length_column_name="length", bf16=False,
                    router_init="random", report_to=[])
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.lr_scheduler_type == "linear"
