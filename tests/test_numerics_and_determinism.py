"""Finite numbers in every precision for extreme inputs, bit-identical training runs, and no unpickling anywhere."""

import re
from pathlib import Path

import pytest
import torch
from conftest import batch, tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset

from aggregation_iclm import Aggregation
from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from mutual_information_iclm import penalty
from router_iclm import VectorQuantizedRouter
from trainer_iclm import IclmTrainer, IclmTrainingArguments

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ROOT = Path(__file__).resolve().parents[1]


def _extreme(rows, length, hidden, dtype, identical=False):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(rows, length, hidden, generator=generator).sign() * 1e4
    if identical:
        states = states[:1].expand(rows, -1, -1).clone()
    return states.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, identical", [(1, False), (6, True), (6, False)])
def test_router_mi_and_aggregation_stay_finite(dtype, rows, identical):
    states = _extreme(rows, 5, 32, dtype, identical).requires_grad_()
    mask = torch.ones(rows, 5, dtype=torch.bool)
    for quantization in ("hard", "soft", "gumbel"):
        router = VectorQuantizedRouter(32, 8, 3, 0.25, quantization, 0.2, "token").train()
        routing = router(states, mask)
        routing.commitment_loss.backward()
        assert torch.isfinite(routing.commitment_loss) and torch.isfinite(routing.embeddings).all()
        assert torch.isfinite(router.codebook.grad).all() and ((routing.routes >= 0) & (routing.routes < 3)).all()
    flat = states.reshape(-1, 32)
    other = (-flat).detach().requires_grad_()
    value = penalty(flat, other)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(other.grad).all()
    head = torch.nn.Linear(32, 50, bias=False).to(dtype)
    for strategy in ("hidden_states", "logits", "probas"):
        aggregation = Aggregation(32, strategy, 0.5)  # float32 parts on a half-precision base, as ICLM keeps them
        logits = aggregation.logits(flat.detach(), other.detach(), head)
        assert torch.isfinite(logits).all(), strategy


def test_a_bfloat16_model_trains_on_extreme_embeddings():
    base = tiny_llama().to(torch.bfloat16)
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(1e3)
    model = IclmForCausalLM.from_base(base, num_domains=2).train()
    out = model(**batch())
    out.loss.backward()
    assert all(torch.isfinite(getattr(out, name)) for name in ("loss", "commitment_loss", "mi_loss"))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _train(tmp_path):
    model = IclmForCausalLM.from_base(tiny_llama(seed=3), num_domains=2)
    args = IclmTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                 learning_rate=5e-3, report_to="none", save_strategy="no", seed=11,
                                 router_init_samples=16, dead_centroid_steps=1)
    IclmTrainer(model=model, args=args, train_dataset=Dataset.from_list(two_domain_rows(32)),
                data_collator=AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64)).train()
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("model.base.")}


def test_two_seeded_cpu_runs_are_bit_identical(tmp_path):
    first, second = _train(tmp_path / "a"), _train(tmp_path / "b")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key  # adapters, router and aggregation, bit for bit
    assert any(first[k].abs().sum() > 0 for k in first if k.endswith("lora_B"))  # and they did train


def test_the_code_base_never_unpickles():
    """Weights are safetensors only: no torch.load / pickle.load anywhere in the project (tests included)."""
    forbidden = re.compile(r"\btorch\.load\(|\bpickle\.loads?\(|\bdill\.loads?\(|\bjoblib\.load\(")
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert len(tracked) > 40
    offenders = []
    for path in (ROOT / name for name in tracked):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if forbidden.search(line) and "forbidden = re.compile" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
