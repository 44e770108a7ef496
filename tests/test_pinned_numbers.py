"""Numbers pinned by hand-derived formulas, so that a wrong line in the method fails here.

Each test guards one line that a plausible edit could break without anything else noticing: the stop-gradients
of the VQ loss, soft quantisation, the [½I, ½I] aggregation start, the k-means update, per-token adapters, the
token-level loss's mask.
"""

import torch
import torch.nn.functional as F
from conftest import batch, make_trained, tiny_llama

from modeling_iclm import IclmForCausalLM
from router_iclm import VectorQuantizedRouter
from trainer_iclm import kmeans


def _router(quantization="hard", routing_level="input", seed=0):
    torch.manual_seed(seed)
    return VectorQuantizedRouter(8, 4, 3, 0.25, quantization, 0.2, routing_level).train()


def test_vq_gradients_follow_the_stop_gradients():
    """L = β‖z − sg(e)‖² + ‖sg(z) − e‖²: the codebook gets 2(e − z), the embedding 2β(z − e), per sequence mean."""
    router = _router()
    states = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(5, 3, dtype=torch.bool)
    z = router(states, mask).embeddings.detach().requires_grad_()
    routes = router.distances(z).argmin(-1)
    loss = router._assign(z, None)[1].mean()
    loss.backward()
    chosen = router.codebook[routes].detach()
    torch.testing.assert_close(z.grad, 2 * 0.25 * (z.detach() - chosen) / 5)
    expected = torch.zeros_like(router.codebook)
    expected.index_add_(0, routes, 2 * (chosen - z.detach()) / 5)
    torch.testing.assert_close(router.codebook.grad, expected)


def test_soft_quantisation_moves_every_centroid_hard_only_the_chosen_one():
    states = torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(6, 3, dtype=torch.bool)
    grads = {}
    for quantization in ("hard", "soft"):
        router = _router(quantization)
        routing = router(states, mask)
        routing.commitment_loss.backward()
        unused = sorted(set(range(3)) - set(routing.routes.tolist()))
        grads[quantization] = (router.codebook.grad, unused, routing.routes, router)
    grad, unused, _, _ = grads["hard"]
    assert unused and grad[unused].abs().sum() == 0
    grad, unused, routes, router = grads["soft"]
    assert torch.equal(routes, grads["hard"][2])  # soft routes are still the nearest centroids
    with torch.no_grad():
        z = router(states, mask).embeddings
        weights = torch.softmax(-router.distances(z) / router.scaled_temperature(), -1)
    expected = (2 * weights[:, :, None] * (router.codebook.detach()[None] - z[:, None])).mean(0)
    torch.testing.assert_close(grad, expected)  # each centroid pulled by its soft weight


def test_an_untrained_aggregation_averages_the_two_modules():
    """[½I, ½I]: the untrained mix is the modules' mean state ([I, 0] would equal the base only while the
    modules are equal)."""
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2)).eval()
    model.aggregation.reset_parameters()
    out = model(**batch(), output_hidden_states=True)
    torch.testing.assert_close(model.model(**{k: v for k, v in batch().items() if k != "labels"}).last_hidden_state,
                               (out.invariant_states + out.domain_states) / 2)
    torch.testing.assert_close(out.logits, model.head((out.invariant_states + out.domain_states) / 2))


def test_kmeans_moves_centroids_to_their_cluster_means():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    points = torch.cat([c + torch.randn(40, 2, generator=generator) for c in centres])
    found = kmeans(points, 3, 20, torch.Generator().manual_seed(1))
    order = torch.cdist(centres, found).argmin(1)
    means = torch.stack([points[40 * i: 40 * (i + 1)].mean(0) for i in range(3)])
    torch.testing.assert_close(found[order], means)  # the means, not the seeds (which are data points)
    assert kmeans(points, 3, 0, torch.Generator().manual_seed(1)).tolist() != found.tolist()


def test_per_token_adapters_equal_per_row_adapters():
    """Token-level module ids that happen to be constant per row must give exactly the per-row outputs."""
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3)).eval()
    inputs = batch()
    rows = torch.tensor([1, 3, 2, 1])  # module ids: domain_0, domain_2, domain_1, domain_0
    outputs = {}
    for name, ids in (("rows", rows), ("tokens", rows[:, None].expand(4, 12))):
        model.routing.set(ids)
        outputs[name] = model.base(input_ids=inputs["input_ids"]).logits
        model.routing.clear()
    torch.testing.assert_close(outputs["tokens"], outputs["rows"], atol=1e-5, rtol=1e-4)
    model.routing.set(torch.ones(4, dtype=torch.long))
    assert not torch.allclose(model.base(input_ids=inputs["input_ids"]).logits, outputs["rows"])
    model.routing.clear()


def test_token_level_vq_loss_ignores_padding_and_answer_tokens():
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=3, routing_level="token").eval()
    inputs = batch(batch_size=1, length=10, answer=2)
    alone = model.route(**inputs).sequence_losses
    padded = {k: F.pad(v, (4, 0), value=0 if k != "labels" else -100) for k, v in inputs.items()}
    torch.testing.assert_close(model.route(**padded).sequence_losses, alone, atol=1e-5, rtol=1e-4)
    other_answer = {k: v.clone() for k, v in inputs.items()}
    other_answer["input_ids"][0, -2:] = torch.tensor([50, 60])
    other_answer["labels"][0, -2:] = torch.tensor([50, 60])
    torch.testing.assert_close(model.route(**other_answer).sequence_losses, alone)
