"""Cached router states: the frozen base's prompt states are computed once per prompt, with identical results."""

import pytest
import torch
from conftest import batch, make_trained, tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset

from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmTrainer, IclmTrainingArguments


def _count_base_passes(model):
    calls = []
    original = model.model._router_states

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.model._router_states = counting
    return calls


def test_cached_routing_is_identical_and_skips_the_base():
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3)).eval()
    inputs = batch()
    inputs["attention_mask"][0, :3] = 0  # left padding: positions from the mask
    reference = model(**inputs)
    model.cache_router_states(True)
    calls = _count_base_passes(model)
    first = model(**inputs)
    shuffled = model(**{k: v[[2, 0, 3, 1]] for k, v in inputs.items()})
    again = model(**inputs)
    assert len(calls) == 1  # only the first call ran the base for the router
    for out in (first, again):
        assert torch.equal(out.routes, reference.routes)
        torch.testing.assert_close(out.router_embeddings, reference.router_embeddings)
        torch.testing.assert_close(out.loss, reference.loss)
    assert torch.equal(shuffled.routes, reference.routes[[2, 0, 3, 1]])
    model.cache_router_states(False)
    model(**inputs)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="routing_level='input'"):
        IclmForCausalLM.from_base(tiny_llama(), num_domains=2, routing_level="token").cache_router_states(True)


def _train(tmp_path, cache):
    model = IclmForCausalLM.from_base(tiny_llama(seed=2), num_domains=2, lora_dropout=0.0)
    calls = _count_base_passes(model)
    args = IclmTrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                                 per_device_eval_batch_size=8, report_to="none", save_strategy="no", seed=0,
                                 router_init_samples=16, cache_router_states=cache, dead_centroid_steps=0)
    IclmTrainer(model=model, args=args, train_dataset=Dataset.from_list(two_domain_rows(16)),
                data_collator=AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64)).train()
    return {k: v for k, v in model.state_dict().items() if not k.startswith("model.base.")}, len(calls)


def test_training_with_cached_routes_is_the_same_without_per_step_router_passes(tmp_path):
    plain, plain_calls = _train(tmp_path / "plain", cache=False)
    cached, cached_calls = _train(tmp_path / "cached", cache=True)
    assert plain_calls == 2 + 4  # k-means pass (2 batches of 8) + one router pass per step (2 epochs × 2 steps)
    assert cached_calls == 2  # the k-means pass saw every prompt: training steps never run the router's base pass
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], msg=key)
