"""Configuration of an Independent Causal Language Model (Gendron et al., EMNLP 2024).

The base causal LM's own config is nested as ``text_config`` so that ``generate()`` and device
placement read it through ``config.get_text_config()``; everything ICLM adds (modules, router,
aggregation, mutual information) is validated here, before any weight is built.
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

AGGREGATIONS = ("hidden_states", "logits", "probas")
QUANTIZATIONS = ("hard", "soft", "gumbel")
ROUTING_LEVELS = ("input", "token")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class IclmConfig(PretrainedConfig):
    r"""Configuration of [`IclmForCausalLM`].

    Args:
        text_config (`dict` or `PretrainedConfig`): config of the frozen base causal LM.
        base_model_name_or_path (`str`, *optional*): where the base weights come from. When set,
            checkpoints store only the trained parts and reload the base from here.
        num_domains (`int`, defaults to 2): number N of domain-specific modules (and router centroids).
        use_invariant_module (`bool`, defaults to `True`): `False` gives the paper's
            "ICLM without invariant module" ablation (routed domain module only).
        lora_r, lora_alpha, lora_dropout: LoRA settings of every module (paper: 8, 16, 0.05).
        lora_target_modules (`list[str]`, *optional*): module names (suffixes) that get LoRA;
            `None` picks the base's attention projections (q/k/v/o_proj, or PEFT's defaults).
        router_dim (`int`, defaults to 64): dimension of the router's projection of base states.
        router_beta (`float`, defaults to 0.25): commitment weight β of the VQ loss.
        router_quantization (`str`): "hard" (nearest centroid), "soft" (nearest centroid, codebook
            learns from soft assignments), "gumbel" (routes sampled from softmax(-d/τ) in training).
        router_temperature (`float`): τ for "soft" and "gumbel".
        routing_level (`str`): "input" (one module per input) or "token" (each prompt token routed
            by its own embedding; answer and generated tokens use the input's route, so generation
            needs the KV cache, the default).
        aggregation (`str`): "hidden_states" (paper: concat of both modules' states into a head),
            "logits" or "probas" (weighted sums).
        invariant_weight (`float`): weight w of the invariant module in "logits"/"probas".
    """

    model_type = "iclm"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        base_model_name_or_path: str | None = None,
        num_domains: int = 2,
        use_invariant_module: bool = True,
        lora_r: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        router_dim: int = 64,
        router_beta: float = 0.25,
        router_quantization: str = "hard",
        router_temperature: float = 1.0,
        routing_level: str = "input",
        aggregation: str = "hidden_states",
        invariant_weight: float = 0.5,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            _check("model_type" in text_config, "text_config needs a 'model_type' (e.g. 'llama').")
            text_config = CONFIG_MAPPING[text_config["model_type"]](**text_config)
        _check(
            text_config is None or isinstance(text_config, PretrainedConfig),
            f"text_config must be a dict or a PretrainedConfig, got {type(text_config).__name__}.",
        )
        self.text_config = text_config
        self.base_model_name_or_path = base_model_name_or_path
        self.num_domains = num_domains
        self.use_invariant_module = use_invariant_module
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = list(lora_target_modules) if lora_target_modules else None
        self.router_dim = router_dim
        self.router_beta = router_beta
        self.router_quantization = router_quantization
        self.router_temperature = router_temperature
        self.routing_level = routing_level
        self.aggregation = aggregation
        self.invariant_weight = invariant_weight
        kwargs.setdefault("tie_word_embeddings", False)
        if text_config is not None and kwargs.get("attn_implementation") is None:
            # The setter propagates to text_config: keep the base's attention instead of resetting it to None.
            kwargs["attn_implementation"] = text_config._attn_implementation
        super().__init__(**kwargs)
        self.validate_iclm()

    def validate_iclm(self) -> None:
        """Raise a ValueError naming the wrong setting and what is allowed."""
        _check(
            isinstance(self.num_domains, int) and not isinstance(self.num_domains, bool) and self.num_domains >= 1,
            f"num_domains must be an int >= 1 (the number of domain-specific modules), got {self.num_domains!r}.",
        )
        _check(isinstance(self.lora_r, int) and self.lora_r >= 1, f"lora_r must be an int >= 1, got {self.lora_r!r}.")
        _check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha!r}.")
        _check(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        _check(
            self.lora_target_modules is None or all(isinstance(m, str) and m for m in self.lora_target_modules),
            f"lora_target_modules must be None or a list of module names, got {self.lora_target_modules!r}.",
        )
        _check(
            isinstance(self.router_dim, int) and self.router_dim >= 1,
            f"router_dim must be an int >= 1, got {self.router_dim!r}.",
        )
        _check(self.router_beta >= 0, f"router_beta must be >= 0 (paper: 0.25), got {self.router_beta!r}.")
        _check(
            self.router_quantization in QUANTIZATIONS,
            f"router_quantization must be one of {QUANTIZATIONS}, got {self.router_quantization!r}.",
        )
        _check(self.router_temperature > 0, f"router_temperature must be > 0, got {self.router_temperature!r}.")
        _check(
            self.routing_level in ROUTING_LEVELS,
            f"routing_level must be one of {ROUTING_LEVELS}, got {self.routing_level!r}.",
        )
        _check(
            self.aggregation in AGGREGATIONS,
            f"Unknown aggregation {self.aggregation!r}: use one of {AGGREGATIONS}.",
        )
        _check(
            0 <= self.invariant_weight <= 1,
            f"invariant_weight must be in [0, 1] (domain weight is 1 - w), got {self.invariant_weight!r}.",
        )

    @property
    def module_names(self) -> list[str]:
        """Adapter names, in the order of module ids: the invariant module first, then domain_0 … domain_{N-1}."""
        return ["invariant"] * self.use_invariant_module + [f"domain_{k}" for k in range(self.num_domains)]


__all__ = ["IclmConfig"]
