"""Continual learning on the model: a domain module added for a new distribution, the old ones frozen."""

import pytest
import torch
from conftest import make_trained, tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from transformers import AutoModelForCausalLM

from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM


def _new_domain_batch(count=8, seed=3):
    """Prompts from a third 'domain' (words neither of the two training domains uses)."""
    import random

    rng = random.Random(seed)
    rows = [{"prompt": " ".join(f"x{rng.randrange(3)}" for _ in range(6)) + " ", "answer": f"y{rng.randrange(3)}"}
            for _ in range(count)]
    return AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64, padding_side="right")(rows)


def _old_batch():
    batch = AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64, padding_side="right")(two_domain_rows(8))
    batch.pop("domain_ids")
    return batch


def _model():
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2, lora_dropout=0.0)).eval()
    old = _old_batch()
    with torch.no_grad():  # centroids at the two old domains' prompts
        embeddings = model.route(**old).embeddings
        model.router.codebook.copy_(torch.stack([embeddings[0::2].mean(0), embeddings[1::2].mean(0)]))
    return model


def test_an_added_module_changes_nothing_until_it_trains_and_takes_the_new_prompts():
    model = _model()
    old, new = _old_batch(), _new_domain_batch()
    with torch.no_grad():
        before = model(**old)
        name = model.add_domain_module(model.route(**new).embeddings)
        after = model(**old)
    assert name == "domain_2" and model.config.num_domains == 3
    assert model.config.module_names == ["invariant", "domain_0", "domain_1", "domain_2"]
    assert model.router.codebook.shape == (3, 64)
    assert all(routed.adapters["domain_2"].lora_B.abs().sum() == 0 for routed in model.lora.values())
    assert torch.equal(after.routes, before.routes)  # old prompts keep their modules
    torch.testing.assert_close(after.logits, before.logits)
    assert (model.route(**new).routes == 2).float().mean() >= 0.75  # the new distribution goes to the new module


def test_frozen_old_modules_and_routes_stay_while_the_new_module_trains():
    model = _model()
    new = _new_domain_batch()
    model.add_domain_module(model.route(**new).embeddings)
    model.freeze_modules(["domain_0", "domain_1"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old_routes = model(**_old_batch()).routes
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(**new).loss.backward()
        optimizer.step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(".domain_0." in k or ".domain_1." in k or "aggregation" in k for k in moved)
    assert any(".domain_2." in k for k in moved) and any(".invariant." in k for k in moved)
    assert "model.router.projection.weight" not in moved
    codebook = model.router.codebook.detach()
    assert torch.equal(codebook[:2], before["model.router.codebook"][:2])  # frozen centroids
    assert not torch.equal(codebook[2], before["model.router.codebook"][2])  # the new one learns
    assert torch.equal(model.eval()(**_old_batch()).routes, old_routes)
    model.add_domain_module()  # a further module: the frozen ones stay frozen, the new ones learn
    assert model.model._frozen_centroids.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match=r"no module\(s\) \['domain_9'\]"):
        model.freeze_modules(["domain_9"])


def test_growing_keeps_the_freeze_options_it_was_given():
    model = _model()
    model.freeze_modules(["domain_0"], aggregation=False)
    model.add_domain_module()
    assert all(p.requires_grad for p in model.aggregation.parameters())  # still trainable, as asked
    assert model.model._frozen_centroids.tolist() == [True, False, False]


def test_the_invariant_anchor_pulls_toward_the_old_weights():
    model = _model()
    batch = _new_domain_batch()
    model.anchor_invariant(10.0)
    assert float(model._anchor_penalty()) == 0.0
    with torch.no_grad():
        for routed in model.lora.values():
            routed.adapters["invariant"].lora_B.add_(0.1)
    anchored = model(**batch)
    penalty = model._anchor_penalty()
    expected = 10.0 * sum(0.1 ** 2 * routed.adapters["invariant"].lora_B.numel() for routed in model.lora.values())
    torch.testing.assert_close(penalty, torch.tensor(expected), rtol=1e-4, atol=1e-6)
    model.anchor_invariant(0.0)
    assert model._anchor_penalty() is None
    torch.testing.assert_close(anchored.loss - model(**batch).loss, penalty, rtol=1e-4, atol=1e-5)


def test_a_grown_model_round_trips_through_save_automodel_and_peft(tmp_path):
    from peft import PeftModel

    model = _model()
    model.add_domain_module(model.route(**_new_domain_batch()).embeddings)
    make_trained(model, seed=4)
    ids = _old_batch()["input_ids"]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert reloaded.config.num_domains == 3
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    peft = PeftModel.from_pretrained(tiny_llama(), tmp_path / "domain_2").eval()
    torch.testing.assert_close(peft(input_ids=ids).logits, model(input_ids=ids, module=2).logits, atol=1e-5, rtol=1e-4)
    from model_cards import render_model_card

    card = render_model_card(model, None, repo_id="me/grown", eval_results=[], captured={}).content
    assert "domain_2" in card


def test_dead_centroid_restarts_skip_frozen_centroids(tmp_path):
    from datasets import Dataset

    from trainer_iclm import IclmTrainer, IclmTrainingArguments

    model = _model()
    model.add_domain_module(model.route(**_new_domain_batch()).embeddings)
    model.freeze_modules(["domain_0", "domain_1"])
    args = IclmTrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", router_init="random",
                                 dead_centroid_steps=1)
    trainer = IclmTrainer(model=model, args=args, train_dataset=Dataset.from_list(two_domain_rows(8)),
                          data_collator=AnswerOnlyCollator(word_tokenizer(vocabulary()), max_length=64))
    trainer._recent_embeddings = torch.nn.functional.normalize(torch.randn(8, 64), dim=-1)
    trainer.state.global_step = 50
    before = model.router.codebook.detach().clone()
    trainer._restart_dead_centroids()  # every centroid is unused for 50 steps
    after = model.router.codebook.detach()
    assert torch.equal(after[:2], before[:2]) and not torch.equal(after[2], before[2])
