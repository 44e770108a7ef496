"""Static-cache generation (cache_implementation="static", the cache transformers compiles decoding with): for the
full ICLM and each module=, at full depth and with a shared trunk, greedy tokens equal the dynamic cache's; the static
cache holds the 2B-row layout (invariant rows, then routed-domain rows) on adapted layers, B rows on a shared trunk's
bottom layers and for single modules. (Compiled decoding with it: test_compile.py.)"""

import pytest
import torch
from conftest import BASES, left_padded_prompts, make_trained, tiny_llama
from transformers import StaticCache

from modeling_iclm import IclmForCausalLM

MODULES = [None, "invariant", "domain", 0, 1, 2, "base"]


def _model(base_factory, **overrides):
    """Centroids at the three prompts' router embeddings: row k takes domain module k."""
    model = make_trained(IclmForCausalLM.from_base(base_factory(), num_domains=3, **overrides)).eval()
    input_ids, attention_mask = left_padded_prompts()
    with torch.no_grad():
        model.router.codebook.copy_(model.route(input_ids=input_ids, attention_mask=attention_mask).embeddings)
    return model




def _cache_rows(cache) -> list[int]:
    return [layer.keys.shape[0] for layer in cache.layers]


@pytest.mark.parametrize("arch", sorted(BASES))
@pytest.mark.parametrize("adapter_layers", [None, 1], ids=["full_depth", "shared_trunk"])
def test_static_cache_greedy_equals_the_dynamic_cache_for_every_module(arch, adapter_layers):
    model = _model(BASES[arch], adapter_layers=adapter_layers)
    input_ids, attention_mask = left_padded_prompts()
    assert model(input_ids=input_ids, attention_mask=attention_mask).routes.tolist() == [0, 1, 2]
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True)
    for module in MODULES:
        dynamic = model.generate(input_ids, module=module, **kwargs)
        static = model.generate(input_ids, module=module, cache_implementation="static", **kwargs)
        assert isinstance(static.cache, StaticCache)
        assert torch.equal(static.sequences, dynamic.sequences), module
        doubled = 6 if module is None else 3  # the full ICLM: invariant rows, then routed-domain rows
        expected = [doubled] * 2 if adapter_layers is None or module == "base" else [3, doubled]
        assert _cache_rows(static.cache) == (expected if module != "base" else [3, 3]), module


def test_static_cache_keeps_the_prompt_route_and_beam_search_reorders_both_halves():
    model = _model(tiny_llama)
    input_ids, attention_mask = left_padded_prompts()
    routes = model(input_ids=input_ids, attention_mask=attention_mask).routes
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    masks = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, call: masks.append(tuple(call["attention_mask"].shape)), with_kwargs=True)
    static = model.generate(input_ids, cache_implementation="static", **kwargs)
    hook.remove()
    # The prompt's pass reads the 2-D padding mask; each decoding step gets a 4-D mask over the whole static cache.
    assert masks == [(3, 9)] + [(3, 1, 1, 12)] * 3
    oracle = model.generate(input_ids, domain_ids=routes, cache_implementation="static", **kwargs)
    assert torch.equal(static, oracle)
    others = [model.generate(input_ids, domain_ids=torch.full((3,), k), cache_implementation="static", **kwargs)
              for k in range(3)]
    assert any(not torch.equal(other, static) for other in others)  # the route does change the tokens
    beams = dict(kwargs, num_beams=3, early_stopping=True)
    assert torch.equal(model.generate(input_ids, cache_implementation="static", **beams),
                       model.generate(input_ids, **beams))


def test_a_static_cache_continues_from_the_prompt_pass():
    """Forward by hand as generate() does: the prompt with its 2-D mask, then decoding steps with the 4-D masks
    create_masks_for_generate builds (the base's own, for B rows); logits equal the dynamic cache's."""
    model = _model(tiny_llama)
    input_ids, attention_mask = left_padded_prompts()
    cache = StaticCache(config=model.base.config, max_cache_len=16)
    with torch.no_grad():
        first = model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
        dynamic = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
        token = first.logits[:, -1:].argmax(-1)
        mask = torch.cat([attention_mask, torch.ones(3, 1, dtype=torch.long)], 1)
        positions = mask.sum(1, keepdim=True) - 1
        four_d = model.create_masks_for_generate(model.config, torch.empty(3, 1, 0), mask, cache, positions)
        assert four_d.dim() == 4 and four_d.shape[0] == 3
        step = model(input_ids=token, attention_mask=four_d, position_ids=positions, cache=cache, use_cache=True)
        expected = model(input_ids=token, attention_mask=mask, position_ids=positions, cache=dynamic.cache,
                         use_cache=True)
    assert torch.equal(step.routes, first.routes)  # the cache keeps the prompt's routes
    torch.testing.assert_close(step.logits, expected.logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="4-D mask is taken only in the decoding steps of a static cache"):
        model(input_ids=token, attention_mask=four_d, cache=StaticCache(config=model.base.config, max_cache_len=16))
    with pytest.raises(ValueError, match="labels with a 4-D attention_mask"):
        model(input_ids=token, attention_mask=four_d, cache=cache, labels=token)


def test_decoding_steps_get_4d_masks_when_generate_drops_an_all_ones_mask():
    """generate() drops an all-ones mask: the prompt's pass then has none, and each decoding step still gets the
    base's 4-D mask (a step without one would have to read the static cache's length: a graph break when compiled)."""
    model = _model(tiny_llama)
    input_ids = left_padded_prompts()[0][1:]  # rows without padding
    masks = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, call: masks.append(None if call.get("attention_mask") is None
                                                else tuple(call["attention_mask"].shape)), with_kwargs=True)
    kwargs = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    static = model.generate(input_ids, cache_implementation="static", **kwargs)
    hook.remove()
    assert masks == [None] + [(2, 1, 1, 12)] * 3
    assert torch.equal(static, model.generate(input_ids, **kwargs))
