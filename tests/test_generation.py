"""generate(): KV cache for both modules, route computed once from the prompt, beam search."""

import pytest
import torch
from conftest import make_trained, tiny_llama

from modeling_iclm import IclmForCausalLM


def _model(base_factory, **overrides):
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=3, **overrides)).eval()
    torch.manual_seed(0)
    model.router.codebook.data = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    return model


def _prompts():
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, 97, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :2], attention_mask[0, :2] = 0, 0  # left padding
    return input_ids, attention_mask


@pytest.mark.parametrize("module", [None, "invariant", "domain", 1])
def test_greedy_with_cache_equals_without_cache(base_factory, module):
    model = _model(base_factory)
    input_ids, attention_mask = _prompts()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0, module=module)
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without = model.generate(input_ids, use_cache=False, **kwargs)
    assert with_cache.shape == (3, 15)
    assert torch.equal(with_cache, without)


def test_left_padded_batch_matches_each_prompt_alone(base_factory):
    model = _model(base_factory)
    input_ids, attention_mask = _prompts()
    batched = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = model.generate(input_ids[0:1, 2:], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[0, 9:], alone[0, 7:])


def test_router_encodes_the_prompt_once():
    model = _model(tiny_llama)
    calls = []
    model.router.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    input_ids, attention_mask = _prompts()
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert out.shape[1] == 16 and len(calls) == 1 and calls[0][1] == 9  # one call, over the prompt only


def test_generation_keeps_the_prompt_route():
    model = _model(tiny_llama)
    input_ids, attention_mask = _prompts()
    routes = model(input_ids=input_ids, attention_mask=attention_mask).routes
    for forced in range(3):
        oracle = torch.full((3,), forced)
        generated = model.generate(input_ids, attention_mask=attention_mask, domain_ids=oracle, max_new_tokens=4,
                                   do_sample=False, pad_token_id=0)
        if torch.equal(oracle, routes):
            routed = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False,
                                    pad_token_id=0)
            assert torch.equal(generated, routed)


def test_beam_search_reorders_both_halves_of_the_cache(base_factory):
    model = _model(base_factory)
    input_ids, attention_mask = _prompts()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0,
                  early_stopping=True)
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without = model.generate(input_ids, use_cache=False, **kwargs)
    assert with_cache.shape == (3, 14)
    assert torch.equal(with_cache, without)


def test_token_level_routing_generates():
    """Prompt tokens use their own routes; new tokens keep the prompt's input-level route (needs the cache)."""
    model = _model(tiny_llama, routing_level="token")
    input_ids, attention_mask = _prompts()
    generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
    with torch.no_grad():
        first = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1].argmax(-1)
    assert generated.shape == (3, 13) and torch.equal(generated[:, 9], first)


def test_cache_without_route_is_an_error():
    model = _model(tiny_llama)
    input_ids, _ = _prompts()
    first = model(input_ids=input_ids, use_cache=True)
    with pytest.raises(ValueError, match="pass domain_ids"):
        model(input_ids=input_ids[:, -1:], cache=first.cache, use_cache=True)
