"""The training example runs unchanged under `accelerate launch` with 2 CPU processes (DDP over gloo)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the example's main() and writes this rank's trainable weights, to compare ranks afterwards.
RANK_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.path.join({root!r}, "examples"))
    from safetensors.torch import save_file
    from train_iclm import main
    trainer = main(sys.argv[1:])
    model = trainer.accelerator.unwrap_model(trainer.model)
    rank = trainer.args.process_index
    assert trainer.args.world_size == 2, trainer.args.world_size
    weights = {{k: v.detach().contiguous() for k, v in model.named_parameters() if v.requires_grad}}
    save_file(weights, os.path.join(trainer.args.output_dir, f"rank{{rank}}.safetensors"))
""")


def _free_port() -> int:
    """A port no other process holds now (a fixed one collides with parallel runs and leftover processes)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_training_keeps_ranks_identical(tmp_path):
    base_dir, out = tmp_path / "base", tmp_path / "out"
    tiny_llama().save_pretrained(base_dir)
    word_tokenizer(vocabulary()).save_pretrained(base_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in two_domain_rows(32)))
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT.format(root=ROOT))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script),
        "--base_model", str(base_dir), "--train_file", str(data), "--output_dir", str(out), "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--report_to", "none",
        "--save_strategy", "no", "--router_init_samples", "16", "--logging_steps", "1", "--max_length", "64",
        "--use_cpu", "--ddp_backend", "gloo",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], atol=0, rtol=0, msg=key)
    assert (out / "model.safetensors").exists() and (out / "domain_1" / "adapter_model.safetensors").exists()
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if k.endswith("lora_B"))  # trained, not the zero init
    assert not any(k.startswith("model.base.") for k in load_file(out / "model.safetensors"))  # base by reference
