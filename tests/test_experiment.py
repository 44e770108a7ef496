"""`iclm experiment --preset smoke` end to end: embedded default base, every system, outputs, resume."""

import json
import math
import os

import matplotlib.image
import pytest

from iclm.cli import main
from iclm.experiment.systems import SYSTEMS

SPLITS = [f"{task}_{rendering}_{split}" for task, splits in
          (("acre", ("iid", "comp", "sys")),
           ("raven", ("center_single", "center_single_balanced", "distribute_four",
                      "in_center_single_out_center_single")))
          for rendering in ("text", "symbolic") for split in splits]
ID_SPLITS = [split for split in SPLITS if split.split("_", 2)[2] in ("iid", "center_single", "center_single_balanced")]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    out, cache = root / "run", root / "cache"
    code = main(["experiment", "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache)])
    assert code == 0
    return out, cache


def test_every_output_exists_and_is_well_formed(smoke_run):
    out, _ = smoke_run
    summary = json.loads((out / "results.json").read_text())
    assert summary["systems"] == list(SYSTEMS)
    assert set(summary["results"]) == set(SYSTEMS)
    for system, by_split in summary["results"].items():
        assert set(by_split) == set(SPLITS), system
        for split, stats in by_split.items():
            assert stats["n"] == 2 and len(stats["values"]) == 2
            assert all(0.0 <= v <= 1.0 for v in stats["values"])
            assert math.isclose(stats["mean"], sum(stats["values"]) / 2)
            assert stats["ci95_low"] <= stats["mean"] <= stats["ci95_high"]
    for split, meta in summary["splits"].items():
        assert meta["ood"] == (split.split("_", 2)[2] not in ("iid", "center_single", "center_single_balanced"))
        assert 0 < meta["chance"] < 1 and 0 < meta["majority"] <= 1
        baselines = summary["baselines"][split]
        assert baselines["chance"] == meta["chance"] and baselines["majority"] == meta["majority"]
        assert ("answer_set_only" in baselines) == split.startswith("raven")
    # The real RAVEN candidate sets give the answer away to a context-blind rule; the balanced ones do not.
    assert summary["baselines"]["raven_symbolic_center_single"]["answer_set_only"] == 1.0
    assert summary["baselines"]["raven_symbolic_center_single_balanced"]["answer_set_only"] < 0.5
    from iclm.analysis.claims import CLAIMS, VERDICTS

    assert list(summary["claims"]) == list(CLAIMS)
    for claim in summary["claims"].values():
        assert claim["verdict"] in VERDICTS and claim["evidence"] and claim["claim"]
    curves = summary["learning_curves"]
    assert set(curves) == {"single_lora", "iclm_no_invariant", "iclm", "iclm_oracle", "iclm_invariant_only",
                           "iclm_domain_only"}
    for curve in curves.values():
        assert curve["steps"] == [0, 2, 3] and set(curve["splits"]) == set(ID_SPLITS)
        assert all(len(at_step) == 2 for values in curve["splits"].values() for at_step in values)
    # Step 0 is the untrained model: the base's own answers (LoRA B = 0, untrained ICLM == base).
    assert summary["leakage"]["train_rows_sharing_a_test_context_dropped"] == {}
    assert "CPU stand-in" in summary["base_model"]
    assert summary["versions"]["transformers"] and summary["hardware"]["cpu_count"]
    assert summary["wall_time_seconds"] > 0 and summary["router"]["purity"]["n"] == 2
    assert math.isclose(summary["systems_seconds_total"], sum(summary["run_seconds"].values()), abs_tol=0.2)
    assert set(summary["independence_seed0"]["splits"]) == set(SPLITS)
    table = (out / "results.md").read_text()
    assert table.startswith("# SMOKE TEST — not a result")
    for name in list(SYSTEMS) + ["chance", "majority", "answer-set only", "best context-blind rule"]:
        assert f"| {name}" in table or f"| *{name}*" in table, name
    assert "The paper's claims" in table and "ID, not context-blind-solvable" in table
    for figure in ("accuracy_by_split", "router_confusion", "router_embeddings", "independence", "learning_curves"):
        image = matplotlib.image.imread(out / "figures" / f"{figure}.png")
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01, figure


def test_per_seed_runs_and_trained_models_are_kept(smoke_run):
    out, _ = smoke_run
    for seed in (0, 1):
        for system in SYSTEMS:
            record = json.loads((out / "runs" / f"seed_{seed}" / f"{system}.json").read_text())
            assert record["seed"] == seed and set(record["splits"]) == set(SPLITS)
        assert (out / "models" / f"seed_{seed}" / "iclm" / "domain_3" / "adapter_model.safetensors").exists()
        assert (out / "models" / f"seed_{seed}" / "single_lora" / "adapter_model.safetensors").exists()


def test_an_interrupted_run_resumes_without_redoing_finished_seeds(smoke_run, tmp_path):
    out, cache = smoke_run
    finished = out / "runs" / "seed_1" / "iclm_domain_only.json"
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("seed_*/*.json") if p != finished}
    finished.unlink()  # as if the run had stopped before its last system
    assert main(["experiment", "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache)]) == 0
    assert finished.exists()
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())


def test_bad_options_are_clear_errors(smoke_run, tmp_path, capsys):
    out, cache = smoke_run
    assert main(["experiment", "--preset", "smoke", "--out", str(tmp_path / "a"), "--systems", "iclm", "moe"]) == 1
    assert "Unknown system(s) ['moe']" in capsys.readouterr().err
    assert main(["experiment", "--preset", "smoke", "--out", str(tmp_path / "b"), "--systems", "iclm_domain_only"]) == 1
    assert "add 'iclm' to --systems" in capsys.readouterr().err
    assert main(["experiment", "--preset", "smoke", "--out", str(out), "--seeds", "3", "--cache-dir", str(cache)]) == 1
    assert "holds a run with other settings" in capsys.readouterr().err
    encoder = tmp_path / "encoder"
    from transformers import DistilBertConfig  # an encoder with no causal-LM class in transformers

    DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32).save_pretrained(encoder)
    assert main(["experiment", "--preset", "smoke", "--out", str(tmp_path / "c"), "--base-model", str(encoder)]) == 1
    assert "without a causal-LM head" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "--preset", "huge", "--out", str(tmp_path / "d")])
    fingerprint = json.loads((out / "experiment.json").read_text())
    assert fingerprint["base"].startswith("default-base-smoke-")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "experiment.json").write_text(json.dumps({**fingerprint, "base": "default-base-smoke-0ld"}))
    assert main(["experiment", "--preset", "smoke", "--out", str(tmp_path / "e"), "--cache-dir", str(cache)]) == 1
    assert "was run on the base 'default-base-smoke-0ld'" in capsys.readouterr().err


def test_example_script_runs_the_same_command(tmp_path):
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "run_experiment.py")
    done = subprocess.run([sys.executable, script, "--preset", "smoke", "--out", str(tmp_path / "x"),
                           "--systems", "iclm", "moe"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Unknown system(s) ['moe']" in done.stderr
    assert not (tmp_path / "x").exists(), "a bad option must fail before anything is written"


def test_generation_leaves_room_for_the_longest_choice(monkeypatch):
    """With a real LLM's tokenizer an answer such as "undetermined" spans several tokens: never cut it."""
    from conftest import word_tokenizer

    from iclm.experiment import evaluation
    from iclm.experiment.presets import get_preset

    budgets = []

    def fake_generate(model, tokenizer, rows, *, max_new_tokens, **kwargs):
        budgets.append(max_new_tokens)
        return [row["answer"] for row in rows]

    monkeypatch.setattr(evaluation, "generate_answers", fake_generate)
    tokenizer = word_tokenizer(["un", "deter", "mined", "on", "off"])
    rows = [{"prompt": "The light is ", "answer": "on", "choices": ["on", "off", "un deter mined"], "task": "acre"}]
    scores = evaluation.evaluate_system(None, tokenizer, {"acre_text_iid": rows}, get_preset("smoke"))
    assert budgets == [4] and scores["acre_text_iid"]["accuracy"] == 1.0


def test_dense_pretraining_text_holds_every_query_with_the_solver_s_label():
    from iclm.experiment.runner import context_key, dense_problem_text
    from iclm.tasks import acre
    from iclm.tasks.acre_generator import query_label

    problem = acre.generated_problems(3, 0, purpose="pretrain")[1]
    text = dense_problem_text(problem, "symbolic", seed="t")
    assert text == dense_problem_text(problem, "symbolic", seed="t")  # deterministic
    lines = text.split("\n")
    context = problem[:6]
    objects = sorted({o for trial in context for o in trial["objects"]})
    queries = lines[-(4 + len(objects)):]
    assert [line for line in lines if line.startswith("[")][:6] == [
        f"{t['objects']} -> {0 if t['light_state'] == 'off' else 2}" for t in context]
    for line in queries:
        ids, answer = line.rsplit(" -> ", 1)
        assert int(answer) == query_label(context, eval(ids))  # noqa: S307 (a list of ints we wrote)
    for trial in problem[6:]:  # the problem's own 4 queries are there
        assert f"{trial['objects']} -> {trial['label']}" in queries
    text_rendering = dense_problem_text(problem, "text", seed="t")
    assert text_rendering.count("The state of the light is ") == 4 + len(objects)
    # The context key of a query row is its prompt without the query line.
    row = acre.generated_rows([problem], "symbolic", "x", seed=0)[0]
    assert context_key("acre", row["prompt"]) == context_key("acre", row["prompt"] + row["answer"])
    assert context_key("acre", row["prompt"]).count("\n") == row["prompt"].count("\n") - 1


def test_raven_context_key_ignores_the_candidates():
    from iclm.experiment.runner import context_key
    from iclm.tasks import load_task

    real, balanced = (load_task("raven", "symbolic", split, limit=1, raven_generated=1)[0]
                      for split in ("center_single", "center_single_balanced"))
    key = context_key("raven", real["prompt"])
    assert key.count("\n") == 7 and key.startswith("1. ") and "A. " not in key
    assert context_key("raven", balanced["prompt"]) != key


def test_split_groups_and_learning_curve_aggregation():
    from iclm.experiment.runner import learning_curves, split_groups, test_splits
    from iclm.experiment.presets import get_preset

    assert "center_single_balanced" not in test_splits(get_preset("smoke", balanced_tests=False))["raven"]
    splits = {"acre_text_iid": {"ood": False, "task": "acre"}, "raven_text_center_single": {"ood": False, "task": "raven"},
              "raven_text_center_single_balanced": {"ood": False, "task": "raven"},
              "acre_text_sys": {"ood": True, "task": "acre"}, "raven_text_distribute_four": {"ood": True, "task": "raven"}}
    baselines = {"raven_text_center_single": {"answer_set_only": 1.0}, "raven_text_center_single_balanced":
                 {"answer_set_only": 0.12}, "acre_text_iid": {}, "acre_text_sys": {}, "raven_text_distribute_four": {}}
    groups = split_groups(splits, baselines)
    assert groups["ID, not context-blind-solvable"] == ["acre_text_iid", "raven_text_center_single_balanced"]
    assert groups["ID, real RAVEN (answer-set rule: 100%)"] == ["raven_text_center_single"]
    assert groups["o.o.d. ACRE (Comp, Sys)"] == ["acre_text_sys"] and groups["o.o.d. RAVEN"] == ["raven_text_distribute_four"]
    records = {(seed, "iclm"): {"curve": {"iclm": {"steps": [0, 5], "splits": {"a": [0.1 + seed, 0.5 + seed]}}}}
               for seed in (0, 1)}
    records[(0, "single_lora")] = {"curve": {}}
    assert learning_curves(records) == {"iclm": {"steps": [0, 5], "splits": {"a": [[0.1, 1.1], [0.5, 1.5]]}}}


def test_adapter_layers_give_the_iclm_systems_a_shared_trunk(smoke_run, tmp_path):
    """`--adapter-layers K` reaches the trained ICLM (its saved config and adapters), not the single LoRA."""
    from safetensors import safe_open

    _, cache = smoke_run
    out = tmp_path / "trunk"
    assert main(["experiment", "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache), "--seeds", "1",
                 "--max-steps", "1", "--test-per-split", "2", "--systems", "iclm", "single_lora",
                 "--adapter-layers", "1"]) == 0
    models = out / "models" / "seed_0"
    assert json.loads((models / "iclm" / "config.json").read_text())["adapter_layers"] == 1
    with safe_open(str(models / "iclm" / "invariant" / "adapter_model.safetensors"), "pt") as adapter:
        layers = {key.split("layers.")[1].split(".")[0] for key in adapter.keys()}
    with safe_open(str(models / "single_lora" / "adapter_model.safetensors"), "pt") as adapter:
        lora_layers = {key.split("layers.")[1].split(".")[0] for key in adapter.keys()}
    assert layers == {"1"} and lora_layers == {"0", "1"}  # the smoke base has 2 layers: ICLM adapts the top one
    assert json.loads((out / "results.json").read_text())["preset"]["adapter_layers"] == 1


def test_training_rows_sharing_a_test_problem_s_context_are_dropped():
    import datasets

    from iclm.experiment.runner import test_contexts_of, without_test_contexts

    context = "[1, 2] -> 2\n[1] -> 0\n"
    tests = {"acre_symbolic_iid": [{"task": "acre", "prompt": context + "[2] -> ", "answer": "2"}]}
    part = datasets.Dataset.from_list([
        {"task": "acre", "prompt": context + "[1] -> ", "answer": "0"},  # the test problem, another query
        {"task": "acre", "prompt": "[3] -> 2\n[3] -> ", "answer": "2"}])
    kept, dropped = without_test_contexts(part, test_contexts_of(tests))
    assert dropped == 1 and kept["prompt"] == ["[3] -> 2\n[3] -> "]
    assert without_test_contexts(kept, test_contexts_of(tests)) == (kept, 0)
