"""Smoke test of ``iclm bench`` (and benchmarks/step_cost.py): the quick run prints its tables and, last, one JSON line
with every ratio (no timing checks: a benchmark measures, a test would only be flaky)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "step_cost.py"
RATIOS = {"train_step_ratio_n2", "train_step_ratio_n2_cached_routes", "train_step_ratio_n8_vs_n2",
          "train_step_ratio_shared_trunk", "extra_param_ratio", "generate_tps_ratio", "generate_tps_ratio_shared_trunk",
          "peak_memory_ratio", "peak_memory_ratio_shared_trunk", "mi_memory_ratio"}


def test_quick_bench_prints_tables_and_a_json_line_of_ratios(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    for expected in ("single PEFT LoRA", "ICLM N=2, cached routes", "trunk K=1", "paper design N=4", "Generation",
                     "MI estimator", "+ checkpointing", "bf16 base"):
        assert expected in run.stdout
    ratios = json.loads(run.stdout.strip().splitlines()[-1])
    assert RATIOS <= set(ratios) and all(value > 0 for value in ratios.values())
    summary = json.loads(out.read_text())
    training = summary["training"]
    # Parameter accounting is exact whatever the machine: LoRA r=8 on q/k/v/o, N+2 copies for the paper design.
    assert training["lora"]["params"] - training["lora"]["trainable"] == summary["base_params"]
    assert training["paper2"]["params"] > 4 * summary["base_params"]
    assert training["trunk"]["params"] < training["iclm"]["params"]  # adapters on half the layers
    assert all(training["iclm"]["routes"])  # the router sends rows to every domain module
    assert ratios["mi_memory_ratio"] < 0.5  # the C×C estimator never builds the n×C×C joint (64 MB here)


@pytest.mark.parametrize("argv, message", [
    (["--adapter-layers", "4"], "--adapter-layers must be in 1 … 3"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--hidden", "30"], "multiple of --heads"),
    (["--profile", "nope"], "--profile 'nope': choose one of"),
    (["--answer", "300"], "--answer 300 must be smaller than --seq"),
])
def test_bench_arguments_are_checked_before_measuring(argv, message, capsys):
    from iclm.cli import main

    assert main(["bench", *argv]) == 1
    assert message in capsys.readouterr().err
