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


# FSDP2 (torch.distributed.fsdp.fully_shard): whole decoder layers and the root sharded, 2 ranks over gloo.
# accelerate enables FSDP only on accelerators (its MULTI_CPU mode is DDP), so on CPU the test drives torch directly.
FSDP_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch, torch.distributed as dist
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import tiny_llama, two_domain_rows, vocabulary, word_tokenizer
    from iclm.tasks import AnswerOnlyCollator
    from modeling_iclm import IclmForCausalLM

    sharded = "RANK" in os.environ
    if sharded:
        dist.init_process_group("gloo")
        from torch.distributed.fsdp import fully_shard
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    torch.manual_seed(0)
    # mi_loss_weight 0: the MI penalty is a batch statistic (each rank estimates its own on half the rows), so with
    # its weight of 1 the curves would differ by the estimator's batch dependence, not by the sharding under test.
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0, mi_loss_weight=0.0).train()
    if sharded:
        for layer in model.base.model.layers:  # each layer's weights with the routed-LoRA hooks on its projections
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    collator = AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64, padding_side="right")
    rows, losses = two_domain_rows(32), []
    for step in range(4):
        local = rows[step * 8:(step + 1) * 8][rank * (8 // world):(rank + 1) * (8 // world)]
        batch = collator(local)
        batch.pop("domain_ids")
        loss = model(**batch, logits_to_keep=1).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = loss.detach().clone()
        if sharded:
            dist.all_reduce(loss)
        losses.append(loss.item() / world)
    sharded_params = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    if rank == 0:
        print("RESULT", json.dumps({{"losses": losses, "sharded_params": sharded_params, "world": world}}))
    if sharded:
        dist.destroy_process_group()
""")


def _fsdp_run(tmp_path, sharded: bool) -> dict:
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port())] if sharded else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*launcher, str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line.split(" ", 1)[1])


def test_fsdp_full_shard_gives_the_one_process_loss_curve(tmp_path):
    """FULL_SHARD over 2 CPU processes (gloo), batch 2 × 4, against one process at batch 8 on the same rows."""
    sharded, single = _fsdp_run(tmp_path, sharded=True), _fsdp_run(tmp_path, sharded=False)
    assert sharded["world"] == 2 and sharded["sharded_params"] > 20  # base, adapters, router, aggregation: DTensors
    assert single["sharded_params"] == 0 and len(sharded["losses"]) == 4
    # Each rank averages its own tokens (and the VQ term over its own inputs): the curves agree to ~1e-4, not bit for bit.
    assert sharded["losses"] == pytest.approx(single["losses"], rel=1e-3)
