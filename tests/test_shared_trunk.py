"""The shared trunk (adapter_layers=K) and the memory options (gradient checkpointing, bf16, a quantized base).

With a shared trunk the bottom L − K layers run once over the batch, the router reads their output (no router pass
of its own), and only the top K layers run twice; the contracts of the full-depth model hold unchanged.
"""

import pytest
import torch
from conftest import VOCAB, batch, make_trained
from test_architectures import ARCHITECTURES, prompts, tiny_base
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from modeling_iclm import IclmForCausalLM


def deep_llama(layers=4):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@torch.no_grad()
def test_every_architecture_runs_a_shared_trunk(arch):
    base = tiny_base(arch)
    input_ids, attention_mask = prompts()
    mask = attention_mask.bool()
    expected = base(input_ids=input_ids, attention_mask=attention_mask).logits
    model = IclmForCausalLM.from_base(base, num_domains=2, adapter_layers=1).eval()
    torch.testing.assert_close(model(input_ids=input_ids, attention_mask=attention_mask).logits[mask], expected[mask],
                               atol=1e-5, rtol=1e-4)
    make_trained(model)
    for extra in ({}, {"num_beams": 3}):
        kwargs = dict(attention_mask=attention_mask, max_new_tokens=4, do_sample=False, pad_token_id=0, **extra)
        assert torch.equal(model.generate(input_ids, use_cache=True, **kwargs),
                           model.generate(input_ids, use_cache=False, **kwargs)), extra


def test_adapters_sit_on_the_top_layers_and_the_router_reads_the_trunk():
    model = make_trained(IclmForCausalLM.from_base(deep_llama(4), num_domains=3, adapter_layers=2)).eval()
    assert {key.split("-")[2] for key in model.lora} == {"2", "3"}
    router_passes = []
    model.model._router_states = lambda *a, **k: router_passes.append(1)
    inputs = batch()
    with torch.no_grad():
        out = model(**inputs)
        trunk = model.base.model.layers[1](  # the trunk's output = the input of the first adapted layer
            model.base(input_ids=inputs["input_ids"], output_hidden_states=True).hidden_states[1],
            position_embeddings=model.base.model.rotary_emb(torch.zeros(1), torch.arange(12)[None]))
    assert not router_passes  # no base pass of its own
    routing = model.router(trunk, torch.ones(4, 12, dtype=torch.bool) & (inputs["labels"] == -100))
    assert torch.equal(out.routes, routing.routes)
    torch.testing.assert_close(out.router_embeddings, routing.embeddings, atol=1e-5, rtol=1e-4)


def test_route_stops_at_the_trunk_and_agrees_with_forward():
    model = make_trained(IclmForCausalLM.from_base(deep_llama(4), num_domains=3, adapter_layers=2)).eval()
    calls = []
    model.base.model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    inputs = batch()
    routing = model.route(**inputs)
    assert not calls  # the layers above the trunk never ran
    assert torch.equal(routing.routes, model(**inputs).routes)


def test_one_step_moves_only_the_top_adapters_and_modules_export_to_peft(tmp_path):
    from peft import PeftModel

    model = make_trained(IclmForCausalLM.from_base(deep_llama(4), num_domains=2, adapter_layers=2, lora_dropout=0.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(**batch(), domain_ids=torch.tensor([0, 0, 0, 0])).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(k.startswith("model.base.") or ".domain_1." in k for k in moved)
    assert any(".invariant." in k for k in moved) and "model.router.codebook" in moved
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    ids = batch()["input_ids"]
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    peft = PeftModel.from_pretrained(deep_llama(4), tmp_path / "domain_0").eval()
    torch.testing.assert_close(peft(input_ids=ids).logits, model(input_ids=ids, module=0).logits, atol=1e-5, rtol=1e-4)


def test_a_trunk_as_deep_as_the_base_is_refused():
    with pytest.raises(ValueError, match="adapter_layers=4: this base has 4 decoder layers; give 1 … 3"):
        IclmForCausalLM.from_base(deep_llama(4), num_domains=2, adapter_layers=4)


# ------------------------------------------------------------------------------------ memory options
def _gradients(model, **kwargs):
    model.zero_grad()
    model(**batch(), **kwargs).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("adapter_layers", [None, 2])
def test_gradient_checkpointing_gives_the_same_gradients(adapter_layers):
    model = make_trained(IclmForCausalLM.from_base(deep_llama(4), num_domains=3, adapter_layers=adapter_layers,
                                                   lora_dropout=0.0)).train()
    plain = _gradients(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = _gradients(model)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("adapter_layers", [None, 2])
def test_a_bfloat16_base_trains_with_float32_modules(adapter_layers):
    model = IclmForCausalLM.from_base(deep_llama(4).to(torch.bfloat16), num_domains=2, adapter_layers=adapter_layers)
    model.train()
    assert model.router.codebook.dtype == torch.float32 and next(model.lora.parameters()).dtype == torch.float32
    out = model(**batch())
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lora.parameters())


@pytest.mark.parametrize("adapter_layers", [None, 2])
def test_a_quantized_base_trains(tmp_path, adapter_layers):
    """transformers' TorchAoConfig with int8 weight-only quantization: the backend that runs on CPU here."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    deep_llama(4).save_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    assert "Int8" in type(base.model.layers[0].self_attn.q_proj.weight).__name__
    model = IclmForCausalLM.from_base(base, num_domains=2, adapter_layers=adapter_layers).train()
    out = model(**batch())
    out.loss.backward()
    assert torch.isfinite(out.loss) and any(p.grad.abs().sum() > 0 for p in model.lora.parameters() if p.grad is not None)
    model.eval()
    generated = model.generate(batch()["input_ids"][:, :6], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (4, 9)


def test_training_routes_are_the_eval_routes_on_a_base_with_dropout():
    """Issue 17 (7): the trunk runs without the base's dropout, so the router reads in training what it reads in eval;
    the adapted layers keep the base's dropout (two training passes still differ)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64, resid_pdrop=0.3,
                        embd_pdrop=0.3, attn_pdrop=0.3)
    model = make_trained(IclmForCausalLM.from_base(GPT2LMHeadModel(config), num_domains=4, adapter_layers=2))
    inputs = batch(batch_size=32, seed=3)
    with torch.no_grad():
        model.router.codebook.copy_(model.eval().route(**inputs).embeddings[:4])  # centroids among the prompts
        expected = model.eval()(**inputs).routes
        model.train()
        first, second = model(**inputs), model(**inputs)
    assert len(set(expected.tolist())) > 1
    assert torch.equal(first.routes, expected) and torch.equal(second.routes, expected)
    assert not torch.allclose(first.logits, second.logits)  # dropout still acts above the trunk
    assert model.base.training  # the base's mode is restored after the pass
