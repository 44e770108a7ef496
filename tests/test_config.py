"""IclmConfig validates itself: each wrong value names the problem and what is allowed."""

import pytest
from conftest import tiny_llama

from configuration_iclm import IclmConfig


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_domains": 0}, "num_domains must be an int >= 1"),
        ({"num_domains": 2.5}, "num_domains must be an int >= 1"),
        ({"num_domains": True}, "num_domains must be an int >= 1"),
        ({"lora_r": 0}, "lora_r must be an int >= 1"),
        ({"lora_alpha": 0}, r"lora_alpha must be a number in \(0, ∞\)"),
        ({"lora_alpha": "16"}, r"lora_alpha must be a number in \(0, ∞\) \(paper: 16\), got '16' \(str\)"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be a number in \[0, 1\)"),
        ({"lora_target_modules": ["q_proj", ""]}, "lora_target_modules must be None, a module name or regex"),
        ({"router_dim": 0}, "router_dim must be an int >= 1"),
        ({"router_beta": -0.1}, r"router_beta must be a number in \[0, ∞\)"),
        ({"router_beta": "0.25"}, r"router_beta must be a number .* got '0.25' \(str\)"),
        ({"router_beta": float("nan")}, r"router_beta must be a number .* got nan"),
        ({"use_invariant_module": "no"}, "use_invariant_module must be True or False, got 'no'"),
        ({"mi_loss_weight": -1}, r"mi_loss_weight must be a number in \[0, ∞\)"),
        ({"router_prefix_length": 0}, "router_prefix_length must be an int >= 1"),
        ({"format_version": 99}, "newer than this code reads"),
        ({"router_quantization": "nearest"}, r"router_quantization must be one of \('hard', 'soft', 'gumbel'\)"),
        ({"router_temperature": 0}, r"router_temperature must be a number in \(0, ∞\)"),
        ({"routing_level": "sentence"}, r"routing_level must be one of \('input', 'token'\)"),
        ({"aggregation": "concat"}, r"Unknown aggregation 'concat': use one of \('hidden_states', 'logits', 'probas'\)"),
        ({"invariant_weight": 1.5}, r"invariant_weight must be a number in \[0, 1\]"),
        ({"text_config": {"hidden_size": 8}}, "text_config needs a 'model_type'"),
        ({"text_config": 3}, "text_config must be a dict or a PretrainedConfig"),
    ],
)
def test_every_wrong_value_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        IclmConfig(**overrides)


def test_round_trip_keeps_the_nested_base_config(tmp_path):
    config = IclmConfig(text_config=tiny_llama().config, num_domains=4, aggregation="probas", invariant_weight=0.2)
    config.save_pretrained(tmp_path)
    loaded = IclmConfig.from_pretrained(tmp_path)
    assert loaded.num_domains == 4 and loaded.aggregation == "probas" and loaded.invariant_weight == 0.2
    assert loaded.text_config.model_type == "llama" and loaded.text_config.hidden_size == 32
    assert loaded.get_text_config().num_hidden_layers == 2
    assert loaded.module_names == ["invariant", "domain_0", "domain_1", "domain_2", "domain_3"]


def test_the_base_attention_implementation_is_kept():
    base = tiny_llama()
    before = base.config._attn_implementation
    IclmConfig(text_config=base.config)
    assert base.config._attn_implementation == before


def test_a_string_target_is_one_module_name_not_its_letters():
    assert IclmConfig(lora_target_modules="q_proj").lora_target_modules == "q_proj"
