"""generate(): KV cache for both modules, route computed once from the prompt, beam search."""

import pytest
import torch
from conftest import left_padded_prompts, make_trained, tiny_llama

from modeling_iclm import IclmForCausalLM


def _model(base_factory, **overrides):
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=3, **overrides)).eval()
    torch.manual_seed(0)
    model.router.codebook.data = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    return model




@pytest.mark.parametrize("module", [None, "invariant", "domain", 1])
def test_greedy_with_cache_equals_without_cache(base_factory, module):
    model = _model(base_factory)
    input_ids, attention_mask = left_padded_prompts()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0, module=module)
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without = model.generate(input_ids, use_cache=False, **kwargs)
    assert with_cache.shape == (3, 15)
    assert torch.equal(with_cache, without)


def test_left_padded_batch_matches_each_prompt_alone(base_factory):
    model = _model(base_factory)
    input_ids, attention_mask = left_padded_prompts()
    batched = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = model.generate(input_ids[0:1, 2:], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[0, 9:], alone[0, 7:])


def test_router_encodes_the_prompt_once():
    model = _model(tiny_llama)
    calls = []
    model.router.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    input_ids, attention_mask = left_padded_prompts()
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert out.shape[1] == 16 and len(calls) == 1 and calls[0][1] == 9  # one call, over the prompt only


def _recorded_domain_rows(model):
    """Every forward's per-row module ids of the domain half (invariant rows come first)."""
    seen = []
    original = model.routing.set

    def record(module_ids):
        if module_ids is not None:
            seen.append(module_ids[module_ids.shape[0] // 2 :].clone())
        original(module_ids)

    model.routing.set = record
    return seen


def test_generation_keeps_the_prompt_route():
    model = _model(tiny_llama)
    input_ids, attention_mask = left_padded_prompts()
    routes = model(input_ids=input_ids, attention_mask=attention_mask).routes
    assert len(set(routes.tolist())) > 1  # the rows really take different modules
    seen = _recorded_domain_rows(model)
    routed = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert len(seen) == 4 and all(torch.equal(rows, routes + 1) for rows in seen)  # every step: the prompt's route
    oracle = model.generate(input_ids, attention_mask=attention_mask, domain_ids=routes, max_new_tokens=4,
                            do_sample=False, pad_token_id=0)
    assert torch.equal(oracle, routed)
    others = [model.generate(input_ids, attention_mask=attention_mask, domain_ids=torch.full((3,), k), max_new_tokens=4,
                             do_sample=False, pad_token_id=0) for k in range(3)]
    assert any(not torch.equal(other, routed) for other in others)  # the route does change the tokens


def test_beam_search_reorders_both_halves_of_the_cache(base_factory):
    model = _model(base_factory)
    input_ids, attention_mask = left_padded_prompts()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0,
                  early_stopping=True)
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without = model.generate(input_ids, use_cache=False, **kwargs)
    assert with_cache.shape == (3, 14)
    assert torch.equal(with_cache, without)


def test_token_level_routing_generates():
    """Prompt tokens use their own routes; new tokens keep the prompt's input-level route (needs the cache)."""
    model = _model(tiny_llama, routing_level="token")
    input_ids, attention_mask = left_padded_prompts()
    generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
    with torch.no_grad():
        first = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1].argmax(-1)
    assert generated.shape == (3, 13) and torch.equal(generated[:, 9], first)
    with pytest.raises(ValueError, match="routing_level='token'.*use_cache=True"):  # it would give other tokens
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, use_cache=False, pad_token_id=0)


def test_a_returned_cache_keeps_the_prompt_route():
    """Multi-turn / continued decoding from a cache an ICLM forward returned: no domain_ids needed."""
    model = _model(tiny_llama)
    input_ids, attention_mask = left_padded_prompts()
    first = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
    step_mask = torch.cat([attention_mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
    continued = model(input_ids=input_ids[:, -1:], attention_mask=step_mask, cache=first.cache, use_cache=True)
    seen = _recorded_domain_rows(model)
    again = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
    explicit = model(input_ids=input_ids[:, -1:], attention_mask=step_mask, cache=again.cache,
                     domain_ids=first.routes, use_cache=True)
    torch.testing.assert_close(continued.logits, explicit.logits)
    assert torch.equal(continued.routes, first.routes) and torch.equal(seen[-1], first.routes + 1)
    generated = model.generate(input_ids=torch.cat([input_ids, input_ids[:, -1:]], 1), attention_mask=step_mask,
                               past_key_values=model(input_ids=input_ids, attention_mask=attention_mask,
                                                     use_cache=True).cache,
                               max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (3, 13)


def test_a_cache_without_routes_is_a_clear_error():
    from transformers import DynamicCache

    model = _model(tiny_llama)
    input_ids, _ = left_padded_prompts()
    cache = DynamicCache()
    model(input_ids=input_ids, cache=cache, use_cache=True, module="invariant")  # a cache no router filled
    with pytest.raises(ValueError, match="another module= run"):
        model(input_ids=input_ids[:, -1:], cache=cache, use_cache=True)
    bare = DynamicCache()
    model(input_ids=input_ids, cache=bare, use_cache=True, domain_ids=torch.tensor([0, 1, 2]))
    del bare.iclm_routes
    with pytest.raises(ValueError, match="continuing from a cache needs the prompt's routes"):
        model(input_ids=input_ids[:, -1:], cache=bare, use_cache=True)
