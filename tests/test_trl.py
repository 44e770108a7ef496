"""TRL: IclmSFTTrainer trains the whole ICLM objective from a prompt–completion dataset (real SFTTrainer runs)."""

import pytest
import torch
from conftest import tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset

from modeling_iclm import IclmForCausalLM

trl = pytest.importorskip("trl")
from iclm.trl import IclmSFTConfig, IclmSFTTrainer  # noqa: E402


def _rows(count=24):
    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["answer"]} for r in two_domain_rows(count)])


def _trainer(tmp_path, padding_free=False, max_steps=3, **overrides):
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0)
    args = IclmSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=max_steps,
                         learning_rate=1e-2, report_to="none", save_strategy="no", logging_steps=1, bf16=False,
                         router_init_samples=24, padding_free=padding_free, max_length=None if padding_free else 1024,
                         seed=0, **overrides)
    return IclmSFTTrainer(model=model, args=args, train_dataset=_rows(), processing_class=word_tokenizer(vocabulary())), model


def test_sft_trains_codebook_and_both_modules_and_logs_the_whole_objective(tmp_path):
    trainer, model = _trainer(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("model.base.")}
    trainer.train()
    moved = {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert "model.router.codebook" in moved
    assert any(".adapters.invariant.lora_B" in k for k in moved)
    assert any(".adapters.domain_0.lora_B" in k or ".adapters.domain_1.lora_B" in k for k in moved)
    logs = [entry for entry in trainer.state.log_history if "lm_loss" in entry]
    assert len(logs) == 3
    for entry in logs:  # the logged loss is the aggregated CE plus the weighted router, MI and module terms
        assert entry["commitment_loss"] > 0 and entry["mi_loss"] != 0 and entry["aux_loss"] > 0
        assert entry["loss"] == pytest.approx(entry["lm_loss"] + entry["aux_loss"], rel=1e-4)
        config = model.config
        aux = (config.commitment_loss_weight * entry["commitment_loss"] + config.mi_loss_weight * entry["mi_loss"]
               + config.invariant_loss_weight * entry["invariant_loss"] + config.domain_loss_weight * entry["domain_loss"])
        assert entry["aux_loss"] == pytest.approx(aux, rel=1e-4)
    assert logs[-1]["num_tokens"] > 0


def test_completion_only_labels_route_on_the_prompt(tmp_path):
    trainer, model = _trainer(tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert (batch["labels"][:, :3] == -100).all()  # TRL masked the prompt
    model.eval()
    with torch.no_grad():
        routed = model(**batch).routes
        other = batch["input_ids"].clone()
        completion = batch["labels"] != -100
        other[completion] = 3 + (other[completion] + 1) % 20  # another completion, same prompt
        assert torch.equal(model(input_ids=other, attention_mask=batch["attention_mask"], labels=batch["labels"]).routes,
                           routed)


def test_padding_free_training_gives_the_padded_losses(tmp_path):
    padded, _ = _trainer(tmp_path / "padded")
    free, _ = _trainer(tmp_path / "free", padding_free=True)
    sample = free.data_collator([free.train_dataset[i] for i in range(8)])
    assert "attention_mask" not in sample and sample["input_ids"].shape[0] == 1  # really one packed row
    padded.train()
    free.train()
    curves = [[e["loss"] for e in t.state.log_history if "lm_loss" in e] for t in (padded, free)]
    assert len(curves[0]) == 3
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)


def test_plain_sft_trainer_is_refused_clearly(tmp_path):
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, report_to="none",
                         save_strategy="no", bf16=False)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=_rows(), processing_class=word_tokenizer(vocabulary()))
    with pytest.raises(ValueError, match="IclmSFTTrainer"):
        trainer.train()
