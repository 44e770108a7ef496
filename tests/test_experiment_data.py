"""The default experiment's training data: fresh generated problems, each seen once, in batches that mix the four
training distributions (the VQ and MI terms are batch statistics: a single-distribution batch shows them no domain
change)."""

import random

import datasets
import torch
from transformers import Trainer, TrainingArguments

from iclm.experiment.presets import get_preset
from iclm.experiment.runner import DISTRIBUTIONS
from iclm.experiment.systems import _common_arguments


def distributions_per_batch(preset, tmp_path, rows_per_distribution: int = 64) -> float:
    """Mean number of distinct training distributions in the batches the Trainer draws with ``preset``'s sampling
    settings, on rows whose lengths differ by distribution as ACRE's and RAVEN's do (3-5x)."""
    rng = random.Random(0)
    rows = [{"prompt": "w " * rng.randint(20 * (1 + d), 24 * (1 + d)), "answer": "a", "distribution": name,
             "domain_id": d} for d, name in enumerate(DISTRIBUTIONS) for _ in range(rows_per_distribution)]
    train = datasets.Dataset.from_list(rows).shuffle(seed=0)
    train = train.map(lambda row: {"length": len(row["prompt"]) + len(row["answer"])})
    args = TrainingArguments(**{**_common_arguments(preset, 0, str(tmp_path)), "max_steps": 4})
    loader = Trainer(model=_Stub(), args=args, train_dataset=train, data_collator=lambda batch: batch).get_train_dataloader()
    counts = [len({row["distribution"] for row in batch}) for batch in loader]
    return sum(counts) / len(counts)


class _Stub(torch.nn.Module):
    def forward(self, **kwargs):
        raise AssertionError("not called")


def test_default_batches_mix_the_training_distributions(tmp_path):
    preset = get_preset("default")
    assert not preset.group_by_length
    assert distributions_per_batch(preset, tmp_path) >= 3.5  # random batches of 16 from 4 even distributions: ~3.98
    grouped = distributions_per_batch(get_preset("default", group_by_length=True), tmp_path)
    assert grouped < 2  # what length grouping did: one distribution per batch


def test_default_training_problems_are_fresh_and_each_seen_once():
    """Every trained system sees each generated problem at most once: the steps draw no more rows than there are."""
    preset = get_preset("default")
    assert preset.max_steps * preset.batch_size <= len(DISTRIBUTIONS) * preset.train_per_distribution
    assert preset.acre_train_generated * 4 >= preset.train_per_distribution  # 4 queries per ACRE problem
    assert preset.raven_train_candidates == "balanced" and preset.raven_train_generated >= preset.train_per_distribution


def test_answers_come_back_in_the_rows_order_when_batches_are_length_sorted():
    """generate_answers batches prompts of similar lengths together; each answer must still be its own row's."""
    from conftest import word_tokenizer
    from iclm.experiment.evaluation import generate_answers

    class Echo(torch.nn.Module):
        """Generates the prompt's last token: the answer names the row it came from."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, **kwargs):
            return torch.cat([input_ids, input_ids[:, -1:]], dim=1)

    words = [f"w{i}" for i in range(40)]
    rows = [{"prompt": " ".join(words[: 3 + (7 * i) % 29]) + f" w{i} ", "answer": "x", "domain_id": 0}
            for i in range(12)]
    answers = generate_answers(Echo(), word_tokenizer(words), rows, batch_size=5, max_new_tokens=1, max_length=64)
    assert answers == [f"w{i}" for i in range(12)]
