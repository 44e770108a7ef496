"""The router's method: soft/Gumbel temperature, float32 under autocast, the pooled term of token-level routing."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_llama, two_pairs_of_close_clusters

from modeling_iclm import IclmForCausalLM
from router_iclm import VectorQuantizedRouter


def _two_domains(generator, rows=32, length=6, hidden=16):
    """Hidden states of two well-separated domains (rows alternate) and their true domain."""
    centres = torch.randn(2, hidden, generator=generator) * 3
    truth = torch.arange(rows) % 2
    states = centres[truth][:, None, :] + torch.randn(rows, length, hidden, generator=generator)
    return states, truth


def _train_router(quantization, steps=150, absolute_temperature=None):
    """Train a router on two well-separated domains from centroids at the domains' means: final eval routes, the
    share of training routes that followed the domains over the last 20 steps, and the soft weight of each
    point's own centroid."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    router = VectorQuantizedRouter(16, 8, 2, 0.25, quantization, 0.2, "input").train()
    if absolute_temperature is not None:  # the old behaviour, for the record
        router.scaled_temperature = lambda: torch.tensor(absolute_temperature)
    states, truth = _two_domains(generator)
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        _, pooled, _ = router.embed(states, mask, torch.arange(32)[:, None].expand(32, 6), 32)
        router.codebook.copy_(torch.stack([pooled[truth == k].mean(0) for k in range(2)]))
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    followed = []
    for _ in range(steps):
        optimizer.zero_grad()
        routing = router(states, mask)
        routing.commitment_loss.backward()
        optimizer.step()
        followed.append((routing.routes == truth).float().mean().item())
    router.eval()
    with torch.no_grad():
        routing = router(states, mask)
        weights = torch.softmax(-router.distances(routing.embeddings) / router.scaled_temperature(), -1)
    own = weights.gather(1, routing.routes[:, None]).mean().item()
    return (routing.routes == truth).float().mean().item(), sum(followed[-20:]) / 20, own


@pytest.mark.parametrize("quantization", ["soft", "gumbel"])
def test_soft_and_gumbel_routing_keep_separated_domains_apart(quantization):
    purity, followed, own = _train_router(quantization)
    assert purity in (0.0, 1.0)  # every point with its domain (up to the centroid order)
    assert followed >= 0.95 or followed <= 0.05  # training routes follow the domains, Gumbel samples included
    assert own >= 0.95  # assignments stay sharp, so soft updates pull each centroid to its own domain


def test_an_absolute_temperature_of_one_made_soft_routing_uniform():
    """What the relative temperature fixes: at τ = 1 on [0, 4] distances the soft weights are near 1/N."""
    _, _, own = _train_router("soft", absolute_temperature=1.0)
    assert own < 0.7




def _kept_and_purity(quantization, seed, steps=150):
    """Train a router from centroids at the four types' means (as k-means finds them); the number of types that keep
    a centroid of their own, and the share of prompts routed to their type's centroid."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    router = VectorQuantizedRouter(16, 8, 4, 0.25, quantization, 0.2, "input").train()
    states, truth = two_pairs_of_close_clusters(generator)
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    rows = states.shape[0]
    with torch.no_grad():
        _, pooled, _ = router.embed(states, mask, torch.arange(rows)[:, None].expand(rows, states.shape[1]), rows)
        router.codebook.copy_(torch.stack([pooled[truth == k].mean(0) for k in range(4)]))
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        router(states, mask).commitment_loss.backward()
        optimizer.step()
    with torch.no_grad():
        routes = router.eval()(states, mask).routes
    own = [int(torch.mode(routes[truth == k]).values) for k in range(4)]
    return len(set(own)), (routes == torch.tensor(own)[truth]).float().mean().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantization", ["hard", "soft", "gumbel"])
def test_close_pairs_stay_apart_when_far_clusters_exist(quantization, seed):
    """A temperature relative to the *mean* spacing (which the far pairs set) let soft routing merge each close pair (2
    of 4 kept, purity 0.53-0.72 here) and Gumbel routing drift (0.53-0.72); hard routing keeps all four."""
    kept, purity = _kept_and_purity(quantization, seed)
    assert kept == 4 and purity >= 0.95


def test_each_centroid_is_tempered_by_its_nearest_neighbour():
    router = VectorQuantizedRouter(16, 3, 4, 0.25, "soft", 0.2, "input")
    with torch.no_grad():
        router.codebook.copy_(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [-1, 0, 0], [-1, 0, 0.3]]))
    torch.testing.assert_close(router.scaled_temperature(), 0.2 * torch.tensor([0.02, 0.02, 0.09, 0.09]))
    point = router.codebook[2:3].detach()  # a point at centroid 2 gives its nearest neighbour e^-5 of its weight
    weights = torch.softmax(-router.distances(point) / router.scaled_temperature(), -1)[0]
    torch.testing.assert_close(weights[3] / weights[2], torch.tensor(math.exp(-5)))
    assert weights[:2].sum() < 1e-30  # the far pair: nothing


def test_gumbel_samples_the_module_but_the_codebook_learns_from_the_nearest_centroid():
    """Committing z to a sampled far centroid (and pulling that centroid to z) was noise the projection turned into
    drift: the VQ gradients of Gumbel routing are those of hard routing, only the routes are sampled."""
    generator = torch.Generator().manual_seed(0)
    states, _ = two_pairs_of_close_clusters(generator)
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    grads, routes = {}, {}
    for quantization in ("hard", "gumbel"):
        torch.manual_seed(0)
        router = VectorQuantizedRouter(16, 8, 4, 0.25, quantization, 50.0, "input").train()  # τ large: many samples off
        routing = router(states, mask)
        routing.commitment_loss.backward()
        grads[quantization] = (router.codebook.grad, router.projection.weight.grad)
        routes[quantization] = routing.routes
    assert not torch.equal(routes["hard"], routes["gumbel"])
    for hard, gumbel in zip(grads["hard"], grads["gumbel"]):
        torch.testing.assert_close(gumbel, hard)


def test_router_and_mi_compute_in_float32_under_bfloat16_autocast():
    """Under bf16 autocast the projection and distances ran in bf16: with close centroids most routes flipped."""
    from mutual_information_iclm import mutual_information

    generator = torch.Generator().manual_seed(0)
    router = VectorQuantizedRouter(64, 64, 16, 0.25, "hard", 0.2, "input").eval()
    states = torch.randn(256, 8, 64, generator=generator)
    mask = torch.ones(256, 8, dtype=torch.bool)
    with torch.no_grad():
        exact = router(states, mask)
        # Close centroids: small perturbations of a few embeddings, where bf16 rounding decides the route.
        router.codebook.copy_(F.normalize(exact.embeddings[:16] + 1e-3 * torch.randn(16, 64, generator=generator), dim=-1))
        exact = router(states, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = router(states, mask)
    assert torch.equal(mixed.routes, exact.routes)
    torch.testing.assert_close(mixed.embeddings, exact.embeddings)
    x, y = torch.randn(24, 64, generator=generator), torch.randn(24, 64, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_mi = mutual_information(x, y)
    assert mixed_mi.dtype == torch.float32
    torch.testing.assert_close(mixed_mi, mutual_information(x, y))


def test_token_level_routing_keeps_the_pooled_vq_term():
    """The route used for answer and generated tokens is the pooled one: its centroids must learn from it too."""
    torch.manual_seed(0)
    token = IclmForCausalLM.from_base(tiny_llama(), num_domains=3, routing_level="token").eval()
    pooled = IclmForCausalLM.from_base(tiny_llama(), num_domains=3).eval()
    pooled.model.router.load_state_dict(token.model.router.state_dict())
    inputs = batch()
    routing = token.route(**inputs)
    reference = pooled.route(**inputs)
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[:, :10] = True  # the prompt
    router = token.router
    states = token.model._router_states(inputs["input_ids"], None, inputs["attention_mask"], None, {})
    tokens, _, counts = router.embed(states, mask, torch.arange(4)[:, None].expand(4, 12), 4)
    _, token_losses = router._assign(tokens, None)
    expected = reference.sequence_losses + (token_losses * mask).sum(1) / counts
    torch.testing.assert_close(routing.sequence_losses, expected)
    assert torch.equal(routing.routes, reference.routes)
