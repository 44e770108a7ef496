"""IclmTrainer's router care, issue 17 items 5 and 6: the router projection frozen after k-means (an option), and
dead-centroid restarts with their own Adam step count, drawn without replacement."""

import pytest
import torch
from conftest import tiny_llama, two_domain_rows, two_pairs_of_close_clusters, vocabulary, word_tokenizer
from datasets import Dataset

from iclm.tasks import AnswerOnlyCollator
from modeling_iclm import IclmForCausalLM
from router_iclm import VectorQuantizedRouter
from trainer_iclm import IclmTrainer, IclmTrainingArguments, kmeans


def _trainer(tmp_path, num_domains=3, **overrides):
    tokenizer = word_tokenizer(vocabulary())
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=num_domains, lora_dropout=0.0)
    options = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=5e-3, max_steps=2,
                   logging_steps=1, report_to="none", save_strategy="no", seed=0, router_init_samples=32,
                   disable_tqdm=True)
    options.update(overrides)
    collator = AnswerOnlyCollator(tokenizer, max_length=64, padding_side="right")
    trainer = IclmTrainer(model=model, args=IclmTrainingArguments(**options),
                          train_dataset=Dataset.from_list(two_domain_rows(32)), data_collator=collator)
    return trainer, model


# ----------------------------------------------------------------------------------------- 6: restarts
def _codebook_optimizer_at_step(trainer, model, steps, generator):
    """The trainer's own AdamW after ``steps`` steps of noisy codebook gradients (nothing else gets a gradient)."""
    trainer.create_optimizer()
    codebook = model.router.codebook
    for _ in range(steps):
        trainer.optimizer.zero_grad()
        codebook.grad = torch.randn(codebook.shape, generator=generator)
        trainer.optimizer.step()
    return trainer.optimizer


@pytest.mark.parametrize("restart_step", [1000, 3000])
def test_a_restarted_centroid_moves_as_with_a_fresh_optimizer(tmp_path, restart_step):
    """Zeroed moments with the global step count moved a centroid restarted at step 1,000 up to 5.2x the learning rate
    per step; now its trajectory is that of a fresh AdamW started at the restart, and the other rows are untouched."""
    trainer, model = _trainer(tmp_path, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    optimizer = _codebook_optimizer_at_step(trainer, model, restart_step, generator)
    codebook = model.router.codebook
    trainer.state.global_step = restart_step
    trainer._last_used = [restart_step, restart_step, 0]  # centroid 2 unused for long
    trainer._recent_embeddings = torch.nn.functional.normalize(torch.randn(16, 64, generator=generator), dim=-1)
    trainer._restart_dead_centroids()
    assert any(torch.equal(codebook.data[2], row) for row in trainer._recent_embeddings)
    fresh_row = codebook.data[2].clone().requires_grad_()
    group = optimizer.param_groups[0]
    fresh = torch.optim.AdamW([fresh_row], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                              weight_decay=group["weight_decay"])
    others = codebook.data[:2].clone()
    reference = torch.optim.AdamW([others.requires_grad_()], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                  weight_decay=group["weight_decay"])
    reference.load_state_dict({"state": {0: {k: (v[:2].clone() if torch.is_tensor(v) and v.dim() else v.clone())
                                             for k, v in optimizer.state[codebook].items()}},
                               "param_groups": reference.state_dict()["param_groups"]})
    start = codebook.data[2].clone()
    gradient = torch.randn(codebook.shape, generator=generator).sign()  # a steady direction: Adam's largest steps
    largest = 0.0
    for _ in range(10):
        before = codebook.data[2].clone()
        optimizer.zero_grad()
        codebook.grad = gradient.clone()
        optimizer.step()
        fresh.zero_grad()
        fresh_row.grad = gradient[2].clone()
        fresh.step()
        reference.zero_grad()
        others.grad = gradient[:2].clone()
        reference.step()
        largest = max(largest, (codebook.data[2] - before).abs().max().item() / group["lr"])
    torch.testing.assert_close(codebook.data[2], fresh_row.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(codebook.data[:2], others.detach())
    assert largest <= 1.01 and (codebook.data[2] - start).abs().max() > 5 * group["lr"]


def test_restart_points_are_drawn_without_replacement(tmp_path):
    """Three dead centroids and three distinct embeddings in the pool (each seen many times): each centroid restarts on
    a different one (drawn with replacement, two often landed on one embedding)."""
    trainer, model = _trainer(tmp_path, num_domains=4)
    distinct = torch.nn.functional.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    for step in range(100, 120):
        trainer.state.global_step = step
        trainer._last_used = [step, 0, 0, 0]
        trainer._recent_embeddings = distinct.repeat(20, 1)
        trainer._restart_dead_centroids()
        restarted = model.router.codebook.data[1:]
        assert len(torch.unique(restarted, dim=0)) == 3
        assert all(any(torch.equal(row, d) for d in distinct) for row in restarted)
    trainer.state.global_step = 200
    trainer._last_used = [200, 0, 0, 0]
    trainer._recent_embeddings = distinct[:2].repeat(5, 1)  # two points for three dead centroids: one waits
    trainer._restart_dead_centroids()
    assert trainer._last_used[1:].count(200) == 2


def test_restarts_zero_the_moments_and_keep_their_step_counts_across_a_resume(tmp_path):
    trainer, model = _trainer(tmp_path, num_domains=3, dead_centroid_steps=2, max_steps=4)
    trainer.train()
    moments = trainer.optimizer.optimizer.state[model.router.codebook]
    trainer._last_used[2] = -10
    trainer._restart_dead_centroids()
    assert moments["exp_avg"][2].abs().sum() == 0 and moments["exp_avg_sq"][2].abs().sum() == 0
    assert moments["exp_avg"][0].abs().sum() > 0 and trainer._restarts.steps == {2: 0}
    import json

    from trainer_iclm import ROUTER_STATE_NAME

    for saved, expected in (({"restarted": {"2": 3}}, {2: 3}), ({}, {})):  # a checkpoint from before: none
        folder = tmp_path / f"checkpoint-{len(saved)}"
        folder.mkdir()
        (folder / ROUTER_STATE_NAME).write_text(json.dumps({"last_used": trainer._last_used, "captured": [],
                                                            "recent_embeddings": None, **saved}))
        resumed, _ = _trainer(tmp_path, num_domains=3)
        resumed._load_router_state(str(folder))
        assert resumed._restarts.steps == expected


# ------------------------------------------------------------------------------- 5: frozen projection


def _four_type_purity_after_training(seed, freeze, steps=300):
    """A router with 2 centroids, initialised by k-means (each takes one task, both renderings), trained on its VQ loss;
    then 4-means over its embeddings: the share of prompts in their own type's cluster, and the renderings' gap."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    router = VectorQuantizedRouter(16, 8, 2, 0.25, "hard", 0.2, "input").train()
    states, truth = two_pairs_of_close_clusters(generator)
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    segments = torch.arange(len(truth))[:, None].expand(mask.shape)

    def embeddings():
        with torch.no_grad():
            return router.embed(states, mask, segments, len(truth))[1]

    router.codebook.data.copy_(kmeans(embeddings(), 2, 20, torch.Generator().manual_seed(seed)))
    if freeze:
        router.projection.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in router.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        router(states, mask).commitment_loss.backward()
        optimizer.step()
    z = embeddings()
    clusters = torch.cdist(z, kmeans(z, 4, 50, torch.Generator().manual_seed(seed))).argmin(1)
    purity = sum(torch.bincount(clusters[truth == k], minlength=4).max().item() for k in range(4)) / len(truth)
    means = torch.stack([z[truth == k].mean(0) for k in range(4)])
    return purity, (means[0] - means[1]).norm().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_frozen_projection_keeps_the_prompt_types_a_centroid_shares_apart(seed):
    """Trained on the VQ loss alone, the projection pulls the two renderings of a task (one centroid) together; frozen
    after k-means it keeps them apart, ready for a later, finer codebook (more modules, k-means again)."""
    frozen_purity, frozen_gap = _four_type_purity_after_training(seed, freeze=True)
    trained_purity, trained_gap = _four_type_purity_after_training(seed, freeze=False)
    assert frozen_purity >= 0.95
    assert trained_gap < 0.5 * frozen_gap


def test_the_trainer_freezes_the_projection_after_kmeans_when_asked(tmp_path):
    for freeze in (False, True):
        trainer, model = _trainer(tmp_path, num_domains=2, freeze_router_projection=freeze, max_steps=3)
        trainer.initialize_router = _spy(trainer.initialize_router, model)
        projection = model.router.projection.weight.detach().clone()
        trainer.train()
        assert trainer.initialize_router.projection_trainable_at_kmeans  # k-means ran with the projection as it was
        moved = not torch.equal(model.router.projection.weight, projection)
        assert moved is not freeze and model.router.projection.weight.requires_grad is not freeze
        assert not torch.equal(model.router.codebook, trainer.initialize_router.centroids)  # the centroids learn


def _spy(initialize, model):
    def wrapped():
        wrapped.projection_trainable_at_kmeans = model.router.projection.weight.requires_grad
        wrapped.centroids = initialize().to(model.router.codebook)
        return wrapped.centroids

    return wrapped


def test_the_option_parses_and_defaults_to_the_paper(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(IclmTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--freeze_router_projection", "true", "--report_to", "none"])
    assert args.freeze_router_projection is True
    assert IclmTrainingArguments(output_dir=str(tmp_path), report_to="none").freeze_router_projection is False
