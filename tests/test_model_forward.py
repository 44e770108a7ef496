"""IclmForCausalLM forward: losses, gradients, routing, aggregation, module selection."""

import pytest
import torch
from conftest import batch, make_trained, tiny_llama

from modeling_iclm import IclmForCausalLM

LOSSES = ("loss", "commitment_loss", "mi_loss", "invariant_loss", "domain_loss")


def test_full_forward_shapes_and_finite_losses(base_factory):
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=3)).eval()  # no dropout: comparable
    inputs = batch()
    out = model(**inputs)
    assert out.logits.shape == (4, 12, 97)
    assert out.routes.shape == (4,) and out.routes.dtype == torch.long
    assert ((out.routes >= 0) & (out.routes < 3)).all()
    assert out.router_embeddings.shape == (4, 64)
    for name in LOSSES:
        value = getattr(out, name)
        assert value.dim() == 0 and torch.isfinite(value), name
    from mutual_information_iclm import penalty, token_seed

    states = model(**inputs, output_hidden_states=True)
    answer = inputs["labels"][:, 1:] != -100
    a_inv, a_dom = states.invariant_states[:, :-1][answer], states.domain_states[:, :-1][answer]
    seed = token_seed(inputs["input_ids"], inputs["attention_mask"])  # the model's draws come from its tokens
    torch.testing.assert_close(out.mi_loss, penalty(a_inv, a_dom, seed=seed))  # at the answer-predicting positions only


def test_untrained_model_reproduces_base_distribution(base_factory):
    base = base_factory()
    inputs = batch()
    with torch.no_grad():
        expected = torch.softmax(base(input_ids=inputs["input_ids"]).logits, -1)
        for aggregation in ("hidden_states", "logits", "probas"):
            model = IclmForCausalLM.from_base(base, num_domains=2, aggregation=aggregation)
            got = torch.softmax(model(input_ids=inputs["input_ids"]).logits.float(), -1)
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_trained_model_differs_from_base():
    base = tiny_llama()
    model = make_trained(IclmForCausalLM.from_base(base, num_domains=2))
    inputs = batch()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=inputs["input_ids"]).logits, base(input_ids=inputs["input_ids"]).logits)


def _grad_norms(model):
    norms = {}
    for key, routed in model.lora.items():
        for name, pair in routed.adapters.items():
            grad = pair.lora_B.grad
            norms[name] = norms.get(name, 0.0) + (0.0 if grad is None else grad.abs().sum().item())
    return norms


def test_gradients_reach_exactly_the_routed_adapters(base_factory):
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=3))
    model.train()
    inputs = batch()
    domain_ids = torch.tensor([0, 0, 2, 2])  # domain_1 is routed to no row
    out = model(**inputs, domain_ids=domain_ids)
    (out.loss + out.commitment_loss + out.mi_loss + out.invariant_loss + out.domain_loss).backward()
    norms = _grad_norms(model)
    assert norms["invariant"] > 0 and norms["domain_0"] > 0 and norms["domain_2"] > 0
    assert norms["domain_1"] == 0.0
    for routed in model.lora.values():
        assert routed.adapters["domain_1"].lora_A.grad is None  # the unrouted module did not even run
    assert all(p.grad is None for p in model.base.parameters())
    assert model.router.codebook.grad is not None and model.router.projection.weight.grad is not None


def test_lm_loss_sends_no_gradient_to_the_router():
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2))
    out = model(**batch())
    (out.lm_loss + out.invariant_loss + out.domain_loss + out.mi_loss).backward()
    assert model.router.codebook.grad is None and model.router.projection.weight.grad is None


def test_a_row_gets_the_same_output_alone_or_in_a_mixed_batch():
    """Per-row routing: row i's logits depend only on its own route, not on the batch's other routes."""
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2)).eval()
    inputs = batch()
    with torch.no_grad():
        mixed = model(input_ids=inputs["input_ids"], domain_ids=torch.tensor([0, 1, 0, 1])).logits
        for row, domain in enumerate([0, 1, 0, 1]):
            alone = model(input_ids=inputs["input_ids"][row : row + 1], domain_ids=torch.tensor([domain])).logits
            torch.testing.assert_close(mixed[row : row + 1], alone, atol=1e-5, rtol=1e-4)


def test_oracle_domain_ids_override_the_router():
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3)).eval()
    inputs = batch()
    oracle = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        out = model(**inputs, domain_ids=oracle)
        assert torch.equal(out.routes, oracle)
        for row in range(4):  # each row really ran its oracle domain module
            single = model(input_ids=inputs["input_ids"][row : row + 1], module=int(oracle[row]), output_hidden_states=True)
            full = model(input_ids=inputs["input_ids"][row : row + 1], domain_ids=oracle[row : row + 1], output_hidden_states=True)
            torch.testing.assert_close(full.domain_states, single.domain_states, atol=1e-5, rtol=1e-4)


def test_router_never_reads_pads_or_answer_tokens(base_factory):
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=4)).eval()
    torch.manual_seed(3)
    model.router.codebook.data = torch.nn.functional.normalize(torch.randn(4, 64), dim=-1)
    inputs = batch(batch_size=6, length=14, answer=3)
    # Left-pad rows 0-2 by a varying amount.
    for row, pads in enumerate([3, 1, 2]):
        inputs["attention_mask"][row, :pads] = 0
        inputs["input_ids"][row, :pads] = 0
    with torch.no_grad():
        reference = model.route(**inputs)
        changed = {k: v.clone() for k, v in inputs.items()}
        answer = changed["labels"] != -100
        changed["input_ids"][answer] = (changed["input_ids"][answer] + 7) % 97  # other answer tokens
        changed["labels"][answer] = changed["input_ids"][answer]
        changed["input_ids"][changed["attention_mask"] == 0] = 5  # other pad ids
        other = model.route(**changed)
    assert torch.equal(reference.routes, other.routes)
    torch.testing.assert_close(reference.embeddings, other.embeddings, atol=1e-5, rtol=1e-4)
    # Same prompt, more padding: the same embedding.
    with torch.no_grad():
        one = model.route(input_ids=inputs["input_ids"][3:4, 5:], labels=inputs["labels"][3:4, 5:])
        padded_ids = torch.cat([torch.zeros(1, 5, dtype=torch.long), inputs["input_ids"][3:4, 5:]], 1)
        mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
        two = model.route(input_ids=padded_ids, attention_mask=mask, labels=torch.cat([torch.full((1, 5), -100), inputs["labels"][3:4, 5:]], 1))
    torch.testing.assert_close(one.embeddings, two.embeddings, atol=1e-5, rtol=1e-4)


def test_router_embeddings_depend_on_the_prompt():
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2).eval()
    inputs = batch()
    with torch.no_grad():
        embeddings = model.route(**inputs).embeddings
    assert not torch.allclose(embeddings[0], embeddings[1])
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("module", ["invariant", "domain", 0, 1, "base"])
def test_single_module_runs(module):
    base = tiny_llama()
    model = make_trained(IclmForCausalLM.from_base(base, num_domains=2)).eval()
    inputs = batch()
    with torch.no_grad():
        out = model(**inputs, module=module, output_hidden_states=True)
        full = model(**inputs, output_hidden_states=True)
    assert out.logits.shape == full.logits.shape
    own_ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 97), inputs["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, own_ce)  # the module's own CE, nothing added
    if module == "invariant":
        torch.testing.assert_close(out.invariant_states, full.invariant_states, atol=1e-5, rtol=1e-4)
        assert out.invariant_loss is out.lm_loss and out.routes is None and out.domain_loss is None
    elif module == "domain":
        torch.testing.assert_close(out.domain_states, full.domain_states, atol=1e-5, rtol=1e-4)
        assert torch.equal(out.routes, full.routes) and out.commitment_loss is not None
    elif module == "base":
        torch.testing.assert_close(out.logits, base(input_ids=inputs["input_ids"]).logits, atol=1e-5, rtol=1e-4)
    else:
        assert torch.equal(out.routes, torch.full((4,), module))
        assert out.domain_loss is out.lm_loss and out.commitment_loss is None and out.invariant_loss is None


def test_aggregated_loss_matches_logits(base_factory):
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=2))
    inputs = batch()
    out = model(**inputs)
    shift_logits = out.logits[:, :-1].reshape(-1, 97)
    expected = torch.nn.functional.cross_entropy(shift_logits, inputs["labels"][:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.lm_loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aggregation", ["logits", "probas"])
def test_weighted_aggregations(aggregation):
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2, aggregation=aggregation,
                                                   invariant_weight=0.3)).eval()
    inputs = batch()
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"])
        inv = model(input_ids=inputs["input_ids"], module="invariant").logits
        dom = model(input_ids=inputs["input_ids"], module="domain").logits
    if aggregation == "logits":
        expected = 0.3 * inv + 0.7 * dom
    else:
        expected = torch.log(0.3 * inv.softmax(-1) + 0.7 * dom.softmax(-1))
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-4)


def test_without_invariant_module():
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2, use_invariant_module=False))
    assert model.config.module_names == ["domain_0", "domain_1"] and model.aggregation is None
    out = model(**batch())
    assert out.mi_loss is None and out.invariant_loss is None and torch.isfinite(out.commitment_loss)
    assert out.lm_loss is out.domain_loss  # counted once
    torch.testing.assert_close(out.loss, out.domain_loss + 0.1 * out.commitment_loss)
    with pytest.raises(ValueError, match="use_invariant_module=False"):
        model(**batch(), module="invariant")


def test_token_level_routing():
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3, routing_level="token"))
    torch.manual_seed(0)
    model.router.codebook.data = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    inputs = batch()
    routing = model.route(**inputs)
    assert routing.token_routes.shape == (4, 12)
    answer = inputs["labels"] != -100
    assert torch.equal(routing.token_routes[answer], routing.routes.unsqueeze(1).expand(4, 12)[answer])
    out = model(**inputs)
    out.loss.backward()
    assert torch.isfinite(out.commitment_loss)


@pytest.mark.parametrize("quantization", ["soft", "gumbel"])
def test_soft_and_gumbel_quantisation_train_the_codebook(quantization):
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=3, router_quantization=quantization).train()
    out = model(**batch())
    out.commitment_loss.backward()
    assert model.router.codebook.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # deterministic nearest centroid at inference
        assert torch.equal(model(**batch()).routes, model(**batch()).routes)


def test_parameters_beyond_the_base_stay_small():
    base = tiny_llama()
    model = IclmForCausalLM.from_base(base, num_domains=2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_params = sum(p.numel() for p in base.parameters())
    assert trainable == sum(p.numel() for p in model.parameters()) - base_params
    lora = 2 * 4 * 3 * 8 * (32 + 32) - 2 * 3 * 8 * (32 - 16) * 2  # q,o: 32→32; k,v: 32→16 (2 kv heads)
    assert sum(p.numel() for p in model.lora.parameters()) == lora


def test_bad_inputs_raise_clear_errors():
    model = IclmForCausalLM.from_base(tiny_llama(), num_domains=2)
    inputs = batch()
    with pytest.raises(ValueError, match=r"domain_ids must hold one domain index in \[0, 1\]"):
        model(**inputs, domain_ids=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="domain_ids must hold one domain index"):
        model(**inputs, domain_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="module must be None"):
        model(**inputs, module=5)
    with pytest.raises(ValueError, match="module must be None"):
        model(**inputs, module="router")
    with pytest.raises(ValueError, match="lora_target_modules"):
        IclmForCausalLM.from_base(tiny_llama(), lora_target_modules=["not_a_layer"])
    with pytest.raises(ValueError, match="causal LM with an LM head"):
        IclmForCausalLM.from_base(tiny_llama().model)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match=r"labels has shape \(4, 11\); expected the inputs' \(4, 12\)"):
        model(**{**inputs, "labels": inputs["labels"][:, 1:]})
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 10\); expected \(4, 12\)"):
        model(**{**inputs, "attention_mask": inputs["attention_mask"][:, 2:]})
    with pytest.raises(ValueError, match="2-D .* padding mask.*static"):
        model(**{**inputs, "attention_mask": inputs["attention_mask"][:, None, None, :]})
    with pytest.raises(ValueError, match="contradict"):
        model(**inputs, module=1, domain_ids=torch.tensor([0, 1, 1, 1]))
    assert model(**inputs, module=1, domain_ids=torch.ones(4, dtype=torch.long)).routes.tolist() == [1, 1, 1, 1]

