"""Smoke test of benchmarks/step_cost.py: the quick run prints its tables and writes valid JSON (no timing checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "step_cost.py"


def test_step_cost_quick_run(tmp_path):
    out = tmp_path / "step_cost.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    for expected in ("single PEFT LoRA", "ICLM N=2, router", "ICLM N=4, oracle", "paper design N=4", "Generation",
                     "ICLM N=2 step time / LoRA"):
        assert expected in run.stdout
    assert run.stdout.count("PASS") + run.stdout.count("FAIL") == 3

    summary = json.loads(out.read_text())
    assert set(summary["training"]) == {"lora", "iclm2-router", "iclm2-oracle", "iclm4-router", "iclm4-oracle",
                                        "paper2", "paper4"}
    assert set(summary["generation"]) == {"gen-lora", "gen-iclm2", "gen-iclm4"}
    for result in (*summary["training"].values(), *summary["generation"].values()):
        assert len(result["times"]) >= 1 and result["median_s"] > 0 and result["peak_mb"] >= 0
    training = summary["training"]
    # Parameter accounting is exact, whatever the machine: LoRA r=8 on q/k/v/o, and N+2 copies for the paper design.
    assert training["lora"]["params"] - training["lora"]["trainable"] == summary["base_params"]
    assert training["paper2"]["params"] > 4 * summary["base_params"]
    assert all(training["iclm2-router"]["routes"])  # the router sends rows to every domain module
    assert all(isinstance(target["pass"], bool) for target in summary["targets"].values())
