"""torch.compile (Inductor, default mode) on an ICLM, on CPU: a training step, forward and greedy generation equal
eager, at full depth and with a shared trunk; graph breaks are counted, none in the model's pass (none per layer).

Tolerances are transformers' own compile tests': 1e-5 on logits, losses and gradients, exact greedy tokens. One
compiled model per depth (module-scoped); a tiny 2-layer Llama from its config.

Inductor compiles C++ for every graph: on 2 busy CPU cores the whole file takes ≈ 145 s with an empty Inductor cache
(≈ 50 s with a warm one), 80-100 s of it the first compile. By default the suite runs the representative pair, at full
depth: the training step (its logits are the compiled forward's) and compiled greedy decoding (≈ 110 s cold, ≈ 15 s
warm). ``ICLM_COMPILE_TESTS=all`` adds the shared trunk and the no-grad inference forward.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, make_trained, tiny_llama
from torch._dynamo.utils import counters
from transformers import CompileConfig

from modeling_iclm import IclmForCausalLM

TOL = dict(rtol=1e-5, atol=1e-5)
# Graph breaks of a compiled training forward (torch 2.13's counters), outside the model's pass, each counted for the
# frame that meets it and for its caller: the target checks' one host read of their two counts
# (IclmForCausalLM._check_targets: 2 x 2), the loss's predicting positions (a nonzero: a data-dependent shape, 2) and
# the MI seed's attended tokens (token_seed, a boolean mask: 2). The model's pass itself (router, the 2B-row base pass,
# every adapted layer, aggregation) is one graph with no break: a break per layer would add at least 2 per layer.
TRAINING_BREAKS = {"Data dependent operator": 4, "Dynamic shape operator": 4}


def _breaks() -> dict:
    return {reason.splitlines()[0]: count for reason, count in counters["graph_break"].items()}


def _training_batch():
    inputs = batch(batch_size=3, answer=2)
    inputs["attention_mask"][0, :2] = 0  # left padding: the router reads only the prompt
    return inputs


def _model(adapter_layers):
    """Centroids at the training batch's first two prompts and a third far from both: rows 0 and 1 take different
    domain modules, and domain 2 is used by no row."""
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3, lora_dropout=0.0,
                                                   adapter_layers=adapter_layers))
    with torch.no_grad():
        embeddings = model.route(**_training_batch()).embeddings
        model.router.codebook.copy_(torch.cat([embeddings[:2], -F.normalize(embeddings.sum(0, keepdim=True), dim=-1)]))
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


ALL = os.environ.get("ICLM_COMPILE_TESTS") == "all"
only_with_all = pytest.mark.skipif(not ALL, reason="ICLM_COMPILE_TESTS=all (Inductor compiles for minutes on a CPU)")


@pytest.fixture(scope="module", params=[None, pytest.param(1, marks=only_with_all)], ids=["full_depth", "shared_trunk"])
def pair(request):
    """(eager model, compiled model) over the same parameters."""
    torch._dynamo.reset()
    model = _model(request.param)
    yield model, torch.compile(model)
    torch._dynamo.reset()


def test_a_compiled_training_step_equals_eager(pair):
    model, compiled = pair
    model.train()
    inputs = _training_batch()
    model.zero_grad()
    eager = model(**inputs)
    eager.loss.backward()
    eager_grads = _grads(model)
    assert len(set(eager.routes.tolist())) > 1 and eager.mi_loss.abs() > 0  # rows take different domain modules
    model.zero_grad()
    counters.clear()
    out = compiled(**inputs)
    out.loss.backward()
    breaks = _breaks()
    assert set(breaks) <= set(TRAINING_BREAKS) and all(breaks[k] <= TRAINING_BREAKS[k] for k in breaks), breaks
    assert torch.equal(out.routes, eager.routes)
    for name in ("loss", "lm_loss", "aux_loss", "commitment_loss", "mi_loss", "invariant_loss", "domain_loss", "logits"):
        torch.testing.assert_close(getattr(out, name), getattr(eager, name), **TOL, msg=name)
    grads = _grads(model)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, **TOL, msg=name)
    # Under compile every adapter is in the graph: one no row uses gets a zero gradient where eager gives none.
    unused = [f"domain_{k}" for k in range(3) if k not in eager.routes.tolist()]
    assert unused and all(grads[n].abs().max() == 0 for n in set(grads) - set(eager_grads))
    assert all(any(f".{u}." in n for u in unused) for n in set(grads) - set(eager_grads))
    model.zero_grad()


@only_with_all
def test_a_compiled_forward_equals_eager_without_graph_breaks(pair):
    model, compiled = pair
    model.eval()
    inputs = batch(batch_size=3, answer=0, seed=1)
    inputs.pop("labels")
    inputs["attention_mask"][1, :3] = 0
    with torch.no_grad():
        eager = model(**inputs, use_cache=False)
        counters.clear()
        out = compiled(**inputs, use_cache=False)
    assert _breaks() == {}
    assert torch.equal(out.routes, eager.routes)
    torch.testing.assert_close(out.logits, eager.logits, **TOL)
    torch.testing.assert_close(out.router_embeddings, eager.router_embeddings, **TOL)


def test_compiled_greedy_decoding_with_a_static_cache_equals_eager(pair):
    """generate()'s compiled decoding (a static cache, each step's forward compiled), against eager dynamic-cache
    greedy decoding: the same tokens."""
    model, _ = pair
    model.eval()
    inputs = batch(batch_size=3, answer=0, seed=2)
    inputs.pop("labels")
    inputs["attention_mask"][2, :4] = 0
    kwargs = dict(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    eager = model.generate(**kwargs)
    config = CompileConfig(mode="default")  # transformers compiles decoding on accelerators only, unless told
    config._compile_all_devices = True
    counters.clear()
    compiled = model.generate(**kwargs, cache_implementation="static", compile_config=config)
    assert hasattr(model, "_compiled_call")  # the decoding steps really ran compiled
    assert _breaks() == {}
    assert torch.equal(compiled, eager)


@only_with_all
def test_token_level_routing_and_packed_rows_trace_equal_to_eager():
    """The compiled forms of per-token routing (every module's A on every token, one-hot masked) and of packed rows'
    per-sequence sums (one-hot matmuls), traced by dynamo and AOT autograd (no Inductor: the forms are the point)."""
    torch._dynamo.reset()
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3, lora_dropout=0.0,
                                                   routing_level="token")).train()
    model.router.codebook.data = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(3)), dim=-1)
    padded = batch(batch_size=4, answer=2)
    padded["attention_mask"][1, :3] = 0
    ids = padded["input_ids"][:2].reshape(1, -1)
    labels = ids.clone()
    labels[0, :9], labels[0, 12:22] = -100, -100
    packed = dict(input_ids=ids, position_ids=torch.cat([torch.arange(12), torch.arange(12)])[None], labels=labels)
    compiled = torch.compile(model, backend="aot_eager")
    for inputs in (padded, packed):
        model.zero_grad()
        eager = model(**inputs)
        eager.loss.backward()
        eager_grads = _grads(model)
        model.zero_grad()
        out = compiled(**inputs)
        out.loss.backward()
        assert torch.equal(out.token_routes, eager.token_routes) and len(eager.token_routes.unique()) == 3
        torch.testing.assert_close(out.logits, eager.logits, **TOL)
        torch.testing.assert_close(out.loss, eager.loss, **TOL)
        grads = _grads(model)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(grads[name], grad, **TOL, msg=name)
    torch._dynamo.reset()
