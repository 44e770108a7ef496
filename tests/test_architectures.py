"""The architecture matrix: every common causal-LM family, built from a tiny config in the test (no Hub).

For each: the untrained ICLM is the base (every aggregation, the base's own logit soft-capping and scalings
included), ``module="base"`` is the base, each module is its exported PEFT adapter, a saved ICLM reloads
through ``AutoModelForCausalLM(trust_remote_code=True)`` in a fresh process with identical logits, cached and
uncached greedy and beam generation agree, and one training step moves only the routed adapters and router.
"""

import json
import subprocess
import sys

import pytest
import torch
import transformers as T
from conftest import make_trained
from safetensors.torch import load_file, save_file

from modeling_iclm import IclmForCausalLM

VOCAB = 97
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ARCHITECTURES = {
    "llama": lambda: T.LlamaConfig(num_key_value_heads=2, **_COMMON),
    "qwen2": lambda: T.Qwen2Config(num_key_value_heads=2, **_COMMON),
    "mistral": lambda: T.MistralConfig(num_key_value_heads=2, sliding_window=None, **_COMMON),
    "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=0,
                                 bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: T.GPTNeoXConfig(**_COMMON),  # Pythia
    "phi3": lambda: T.Phi3Config(num_key_value_heads=2, **_COMMON),
    # Soft-capping at 0.5 and the scalings below move every logit: a head without them would differ at once.
    "gemma2": lambda: T.Gemma2Config(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                     final_logit_softcapping=0.5, **_COMMON),
    "cohere": lambda: T.CohereConfig(num_key_value_heads=2, logit_scale=0.25, **_COMMON),
    "granite": lambda: T.GraniteConfig(num_key_value_heads=2, logits_scaling=4.0, **_COMMON),
    "opt": lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2),
    "falcon": lambda: T.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     new_decoder_architecture=False, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


def tiny_base(name: str):
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(ARCHITECTURES[name]()).eval()


def prompts():
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, VOCAB, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :3], attention_mask[0, :3] = 0, 0  # left padding
    return input_ids, attention_mask


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    return request.param


@torch.no_grad()
def test_untrained_iclm_and_module_base_are_the_base(arch):
    base = tiny_base(arch)
    input_ids, attention_mask = prompts()
    expected = base(input_ids=input_ids, attention_mask=attention_mask).logits
    raw = base.get_output_embeddings()(base.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)
    if arch in ("gemma2", "cohere", "granite"):
        assert not torch.allclose(raw, expected, atol=1e-3)  # the transform is really exercised
    for aggregation in ("hidden_states", "logits", "probas"):
        model = IclmForCausalLM.from_base(base, num_domains=2, aggregation=aggregation).eval()
        got = model(input_ids=input_ids, attention_mask=attention_mask).logits
        mask = attention_mask.bool()
        if aggregation == "probas":  # log-probabilities: compare distributions
            got, expected_here = got.log_softmax(-1), expected.log_softmax(-1)
        else:
            expected_here = expected
        torch.testing.assert_close(got[mask], expected_here[mask], atol=1e-5, rtol=1e-4, msg=aggregation)
        model = make_trained(model)
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=attention_mask, module="base").logits[mask],
                                   expected[mask], atol=1e-5, rtol=1e-4)
        model.model.base = None  # let the next aggregation wrap the same base afresh
        for routed in list(base.modules()):
            routed._forward_hooks.clear()


@torch.no_grad()
def test_each_module_is_its_exported_peft_adapter(arch, tmp_path):
    from peft import PeftModel

    model = make_trained(IclmForCausalLM.from_base(tiny_base(arch), num_domains=2)).eval()
    model.save_pretrained(tmp_path)
    input_ids, attention_mask = prompts()
    mask = attention_mask.bool()
    for name, module in (("invariant", "invariant"), ("domain_0", 0), ("domain_1", 1)):
        peft = PeftModel.from_pretrained(tiny_base(arch), tmp_path / name).eval()
        torch.testing.assert_close(peft(input_ids=input_ids, attention_mask=attention_mask).logits[mask],
                                   model(input_ids=input_ids, attention_mask=attention_mask, module=module).logits[mask],
                                   atol=1e-5, rtol=1e-4, msg=name)


def test_every_architecture_reloads_identically_in_a_fresh_process(tmp_path):
    """One subprocess for the whole matrix: AutoModelForCausalLM(trust_remote_code) without this project's code."""
    input_ids, attention_mask = prompts()
    expected = {}
    for name in ARCHITECTURES:
        model = make_trained(IclmForCausalLM.from_base(tiny_base(name), num_domains=2)).eval()
        model.save_pretrained(tmp_path / name)
        with torch.no_grad():
            expected[name] = model(input_ids=input_ids, attention_mask=attention_mask).logits.contiguous()
    save_file({"input_ids": input_ids, "attention_mask": attention_mask}, tmp_path / "inputs.safetensors")
    code = f"""
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
sys.modules.pop("modeling_iclm", None)
inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
out, files = {{}}, {{}}
for name in {sorted(ARCHITECTURES)!r}:
    model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True).eval()
    files[name] = type(model).__module__
    with torch.no_grad():
        out[name] = model(**inputs).logits.contiguous()
save_file(out, {str(tmp_path / "reloaded.safetensors")!r})
print(json.dumps(files))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules") for module in modules.values())  # the saved remote code
    reloaded = load_file(tmp_path / "reloaded.safetensors")
    for name, logits in expected.items():
        torch.testing.assert_close(reloaded[name], logits, atol=1e-6, rtol=1e-5, msg=name)


@torch.no_grad()
def test_cached_and_uncached_generation_agree(arch):
    model = make_trained(IclmForCausalLM.from_base(tiny_base(arch), num_domains=2)).eval()
    input_ids, attention_mask = prompts()
    for extra in ({}, {"num_beams": 3, "early_stopping": True}):
        kwargs = dict(attention_mask=attention_mask, max_new_tokens=5, do_sample=False, pad_token_id=0, **extra)
        cached = model.generate(input_ids, use_cache=True, **kwargs)
        uncached = model.generate(input_ids, use_cache=False, **kwargs)
        assert cached.shape[1] > input_ids.shape[1]
        assert torch.equal(cached, uncached), extra


def test_one_training_step_moves_only_the_routed_adapters(arch):
    model = make_trained(IclmForCausalLM.from_base(tiny_base(arch), num_domains=2, lora_dropout=0.0)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    input_ids, attention_mask = prompts()
    labels = input_ids.masked_fill(~attention_mask.bool(), -100)
    labels[:, :6] = -100  # answer-only labels
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, domain_ids=torch.tensor([0, 0])).loss.backward()
    optimizer.step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(k.startswith("model.base.") for k in moved)  # the base is frozen
    assert not any(".domain_1." in k for k in moved)  # the unrouted module does not move
    assert any(".invariant.lora_" in k for k in moved) and any(".domain_0.lora_" in k for k in moved)
    assert {"model.router.codebook", "model.aggregation.weight"} <= moved
