"""Checkpoints: safetensors only, AutoModel + trust_remote_code in a fresh process, PEFT adapter folders."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import batch, make_trained, tiny_gpt2, tiny_llama
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from configuration_iclm import IclmConfig
from modeling_iclm import IclmForCausalLM

CODE_FILES = {"modeling_iclm.py", "configuration_iclm.py", "lora_iclm.py", "router_iclm.py", "aggregation_iclm.py",
              "mutual_information_iclm.py", "saving_iclm.py"}

# Runs in a fresh interpreter in which the project's own modules cannot be imported at all.
FRESH_PROCESS = textwrap.dedent("""
    import importlib.abc, importlib.util, sys
    PROJECT = {"configuration_iclm", "modeling_iclm", "lora_iclm", "router_iclm", "aggregation_iclm",
               "mutual_information_iclm", "trainer_iclm", "iclm"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in PROJECT:
                raise ModuleNotFoundError(f"{name} is blocked: the project is not installed here")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.tensor([[5, 9, 13, 21, 34, 55, 8, 3]])
    with torch.no_grad():
        out = model(input_ids=inputs)
    print(repr(out.logits[0, -1, :6].tolist()), out.routes.tolist())
""")


def _logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[5, 9, 13, 21, 34, 55, 8, 3]]), **kwargs)


@pytest.mark.parametrize("make_base", [tiny_llama, tiny_gpt2])
def test_auto_model_reload_in_a_fresh_process_without_the_project(tmp_path, make_base):
    model = make_trained(IclmForCausalLM.from_base(make_base(), num_domains=2)).eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert CODE_FILES <= files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_iclm.IclmConfig",
                                  "AutoModelForCausalLM": "modeling_iclm.IclmForCausalLM"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], capture_output=True, text=True,
                            cwd=tmp_path.parent, env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logits_line, routes_line = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    expected = _logits(model)
    assert torch.allclose(torch.tensor(eval(logits_line)), expected.logits[0, -1, :6], atol=1e-5)
    assert eval(routes_line) == expected.routes.tolist()


def test_auto_classes_are_registered_on_import(tmp_path):
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=3)).eval()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), IclmConfig)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, IclmForCausalLM)
    torch.testing.assert_close(_logits(reloaded).logits, _logits(model).logits)


@pytest.mark.parametrize("make_base", [tiny_llama, tiny_gpt2])
def test_each_module_is_a_standard_peft_adapter(tmp_path, make_base):
    model = make_trained(IclmForCausalLM.from_base(make_base(), num_domains=2)).eval()
    model.save_pretrained(tmp_path)
    for module in ("invariant", "domain_0", "domain_1"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / module))
    for module, selector in (("domain_0", 0), ("domain_1", 1), ("invariant", "invariant")):
        peft_model = PeftModel.from_pretrained(make_base(), tmp_path, subfolder=module, adapter_name=module).eval()
        with torch.no_grad():
            peft_logits = peft_model(input_ids=torch.tensor([[5, 9, 13, 21, 34, 55, 8, 3]])).logits
        torch.testing.assert_close(peft_logits, _logits(model, module=selector).logits, atol=1e-5, rtol=1e-4)


def test_base_with_a_source_is_stored_by_reference(tmp_path):
    base_dir, checkpoint = tmp_path / "base", tmp_path / "iclm"
    tiny_llama().save_pretrained(base_dir)
    model = make_trained(IclmForCausalLM.from_base(str(base_dir), num_domains=2)).eval()
    assert model.config.base_model_name_or_path == str(base_dir)
    model.generation_config.max_new_tokens = 7  # saved generation settings come back with the checkpoint
    model.save_pretrained(checkpoint)
    stored = load_file(checkpoint / "model.safetensors")
    assert stored and not any(k.startswith("model.base.") for k in stored)
    assert {k.split(".")[1] for k in stored} == {"lora", "router", "aggregation"}
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
    torch.testing.assert_close(_logits(reloaded).logits, _logits(model).logits)
    assert reloaded.generation_config.max_new_tokens == 7
    # The base can be taken from elsewhere.
    moved = tmp_path / "moved_base"
    os.rename(base_dir, moved)
    with pytest.raises(OSError, match="base_model_name_or_path"):
        IclmForCausalLM.from_pretrained(checkpoint)
    again = IclmForCausalLM.from_pretrained(checkpoint, base_model_name_or_path=str(moved))
    torch.testing.assert_close(_logits(again).logits, _logits(model).logits)


def test_in_memory_base_is_stored_in_full(tmp_path):
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2)).eval()
    assert model.config.base_model_name_or_path is None
    model.save_pretrained(tmp_path)
    assert any(k.startswith("model.base.") for k in load_file(tmp_path / "model.safetensors"))
    reloaded = IclmForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded).logits, _logits(model).logits)


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    base_dir, checkpoint = tmp_path / "base", tmp_path / "iclm"
    tiny_llama().save_pretrained(base_dir)
    IclmForCausalLM.from_base(str(base_dir), num_domains=2).save_pretrained(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["num_domains"] = 3
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Incompatible ICLM checkpoint"):
        IclmForCausalLM.from_pretrained(checkpoint)
