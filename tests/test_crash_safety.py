"""A save killed midway (SIGKILL in a subprocess) leaves the previous checkpoint loadable, and nothing
half-written under a name that looks complete."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import batch, tiny_llama, two_domain_rows, vocabulary, word_tokenizer

from modeling_iclm import IclmForCausalLM

ROOT = Path(__file__).resolve().parents[1]

# Child processes: the slow part of a save is paused (after writing half a file) until the test kills them.
SAVE_SCRIPT = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import torch, transformers.modeling_utils as mu
from conftest import make_trained, tiny_llama
from modeling_iclm import IclmForCausalLM

def stalled_save(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"partial")
    open({marker!r}, "w").close()
    time.sleep(120)

mu.safe_save_file = stalled_save
model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2), seed=5)
model.save_pretrained({target!r})
"""

TRAIN_SCRIPT = """
import json, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset
from transformers import Trainer
from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmTrainer, IclmTrainingArguments

original = Trainer._save_optimizer_and_scheduler
def stalled(self, output_dir):
    if self.state.global_step == 4:  # the second checkpoint: model written, optimizer state half-way
        open(output_dir + "/optimizer.pt", "wb").write(b"partial")
        open({marker!r}, "w").close()
        time.sleep(120)
    return original(self, output_dir)
Trainer._save_optimizer_and_scheduler = stalled
args = IclmTrainingArguments(output_dir={out!r}, max_steps=6, save_strategy="steps", save_steps=2,
                             per_device_train_batch_size=8, report_to="none", router_init_samples=16,
                             dead_centroid_steps=0, seed=0)
model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0)
IclmTrainer(model=model, args=args, train_dataset=Dataset.from_list(two_domain_rows(32)),
            data_collator=AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64)).train()
"""


def _kill_when_stalled(script: str, marker: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before stalling: {child.stderr.read().decode()[-3000:]}")
        assert time.time() < deadline, "the child never reached the stalled save"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_a_killed_save_pretrained_leaves_the_previous_folder_loadable(tmp_path):
    target = tmp_path / "iclm"
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2).eval()
    model.save_pretrained(target)
    before = sorted(p.name for p in target.iterdir())
    expected = model(input_ids=batch()["input_ids"]).logits
    script = SAVE_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), marker=str(tmp_path / "stalled"),
                                target=str(target))
    _kill_when_stalled(script, tmp_path / "stalled")
    assert sorted(p.name for p in target.iterdir()) == before  # untouched
    reloaded = IclmForCausalLM.from_pretrained(target)
    torch.testing.assert_close(reloaded(input_ids=batch()["input_ids"]).logits, expected)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("iclm", "stalled")]
    assert leftovers and all(name.startswith(".iclm.saving-") for name in leftovers)  # hidden, named as unfinished


def test_a_killed_first_save_leaves_nothing_that_looks_like_a_model(tmp_path):
    script = SAVE_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), marker=str(tmp_path / "stalled"),
                                target=str(tmp_path / "iclm"))
    _kill_when_stalled(script, tmp_path / "stalled")
    assert not (tmp_path / "iclm").exists()


def test_a_killed_trainer_checkpoint_is_set_aside_and_training_resumes_from_the_previous_one(tmp_path):
    out = tmp_path / "out"
    script = TRAIN_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), marker=str(tmp_path / "stalled"),
                                 out=str(out))
    _kill_when_stalled(script, tmp_path / "stalled")
    assert (out / "checkpoint-2" / "trainer_state.json").exists() and (out / "checkpoint-4").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2", trust_remote_code=True)  # the previous one loads

    from datasets import Dataset

    from iclm.tasks import AnswerOnlyCollator
    from trainer_iclm import IclmTrainer, IclmTrainingArguments

    args = IclmTrainingArguments(output_dir=str(out), max_steps=6, save_strategy="steps", save_steps=2,
                                 per_device_train_batch_size=8, report_to="none", router_init_samples=16,
                                 dead_centroid_steps=0, seed=0)
    trainer = IclmTrainer(model=IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0), args=args,
                          train_dataset=Dataset.from_list(two_domain_rows(32)),
                          data_collator=AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64))
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6
    assert (out / "checkpoint-4.incomplete").exists()  # set aside, no longer named like a checkpoint
    assert (out / "checkpoint-6" / "trainer_state.json").exists()
