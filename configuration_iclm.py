"""Configuration of an Independent Causal Language Model (Gendron et al., EMNLP 2024).

The base causal LM's own config is nested as ``text_config`` so that ``generate()`` and device
placement read it through ``config.get_text_config()``; everything ICLM adds (modules, router,
aggregation, mutual information) is validated here, before any weight is built.
"""

import math

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

AGGREGATIONS = ("hidden_states", "logits", "probas")
FORMAT_VERSION = 2  # of saved checkpoints; a newer one than this code is refused on load
QUANTIZATIONS = ("hard", "soft", "gumbel")
ROUTING_LEVELS = ("input", "token")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _integer(name: str, value, minimum: int, meaning: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"{name} must be an int >= {minimum} ({meaning}), got {value!r} ({type(value).__name__}).")


def _number(name: str, value, low: float, high: float | None, meaning: str, open_low: bool = False,
            open_high: bool = False) -> None:
    """A real number in [low, high] (ends open where asked): strings, bools and NaN are named, not compared."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    interval = f"{'(' if open_low else '['}{low}, {'∞' if high is None else high}{')' if open_high or high is None else ']'}"
    inside = is_number and (value > low if open_low else value >= low) and (
        high is None or (value < high if open_high else value <= high))
    _check(inside, f"{name} must be a number in {interval} ({meaning}), got {value!r} ({type(value).__name__}).")


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
        router_temperature (`float`, defaults to 0.2): τ for "soft" and "gumbel", relative to each centroid's squared
            distance to its nearest other centroid (softmax(-d_k / (τ·spacing_k))): at 0.2 a point at one centroid
            gives its nearest neighbour e^-5 of its weight, however far the other centroids are. Gumbel routes are
            sampled from it in training; the codebook and projection learn from the nearest centroid.
        routing_level (`str`): "input" (one module per input) or "token" (each prompt token routed
            by its own embedding; answer and generated tokens use the input's route, so generation
            needs the KV cache, the default).
        aggregation (`str`): "hidden_states" (paper: concat of both modules' states into a head),
            "logits" or "probas" (weighted sums).
        invariant_weight (`float`): weight w of the invariant module in "logits"/"probas".
        commitment_loss_weight, mi_loss_weight, invariant_loss_weight, domain_loss_weight (`float`): the
            weights λ_vq, λ_mi, λ_inv, λ_dom (defaults 0.1, 1.0, 0.1, 0.1; the paper: 0.1, 0.01, 0.1, 0.1) with which
            ``forward(labels=...)`` adds the router's VQ loss, the invariant/domain MI penalty and each module's own
            CE to ``loss`` (as Mixtral adds its router loss with ``router_aux_loss_coef``). λ_mi = 1 is picked from a
            measured sweep (README, "MI weight"): the paper's 0.01 leaves the penalty inert (its gradient ≈ 1e-3 of
            the CE's); use 0.01 with ``mi_debiased=False`` for the paper's setting.
        commitment_weighting (`str`, defaults to `"input"`): how ``forward(labels=...)`` averages the router's VQ
            loss over the batch: `"input"`, a mean over the sequences that have targets (the paper's: one term per
            input); `"token"`, each sequence weighted by its labelled tokens (as the CE terms).
        mi_dim (`int`, *optional*): the MI loss compares the states under a fresh random rotation of all H features
            (`None`, the default), or a fresh random ``mi_dim``-dimensional subspace of them per call (cheaper: n·H·mi_dim
            instead of n·H², less sensitive). Configs saved before this option meant 16 *fixed* directions: they now
            get a fresh 16-dimensional subspace per call; set `None` for the default.
        mi_debiased (`bool`, defaults to `True`): the MI loss is ICLM's dependence penalty (states centred and rotated,
            the estimate for fresh wrong pairings subtracted: `mutual_information_iclm.penalty`); `False` with
            `mi_dim=None` is the paper's plug-in estimator (`mutual_information_iclm.mutual_information`).
        adapter_layers (`int`, *optional*): a shared trunk (beyond the paper): the modules' adapters sit on the top
            K layers only; the bottom layers run once over the batch, the router reads their output (no router pass
            of its own), and only the top K run twice (invariant and domain rows). `None`: every layer (the paper).
        base_fingerprint (`dict`, *optional*): set by ``from_base``: the base's architecture, sizes and a hash of
            sampled embedding rows. Loading trained parts onto another base is an error that says what differs.
        router_prefix_length (`int`, defaults to 16): for a sequence labelled from its start (``labels =
            input_ids``, plain-text corpora, packed documents) the router reads its first this many tokens, and
            those tokens are not predicted (their labels are dropped), so no token the router read is a target
            of its route. `None` refuses such sequences instead.
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
        router_temperature: float = 0.2,
        routing_level: str = "input",
        aggregation: str = "hidden_states",
        invariant_weight: float = 0.5,
        commitment_loss_weight: float = 0.1,
        mi_loss_weight: float = 1.0,
        invariant_loss_weight: float = 0.1,
        domain_loss_weight: float = 0.1,
        commitment_weighting: str = "input",
        mi_dim: int | None = None,
        mi_debiased: bool = True,
        router_prefix_length: int | None = 16,
        use_cache: bool = True,
        adapter_layers: int | None = None,
        base_fingerprint: dict | None = None,
        format_version: int = FORMAT_VERSION,
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
        # A string is one module name, or a regex over full module paths (PEFT's meaning); never split into letters.
        self.lora_target_modules = (
            lora_target_modules if isinstance(lora_target_modules, str) or not lora_target_modules
            else list(lora_target_modules)) or None
        self.router_dim = router_dim
        self.router_beta = router_beta
        self.router_quantization = router_quantization
        self.router_temperature = router_temperature
        self.routing_level = routing_level
        self.aggregation = aggregation
        self.invariant_weight = invariant_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.mi_loss_weight = mi_loss_weight
        self.invariant_loss_weight = invariant_loss_weight
        self.domain_loss_weight = domain_loss_weight
        self.commitment_weighting = commitment_weighting
        self.mi_dim = mi_dim
        self.mi_debiased = mi_debiased
        self.router_prefix_length = router_prefix_length
        self.use_cache = use_cache
        self.adapter_layers = adapter_layers
        self.base_fingerprint = base_fingerprint
        self.format_version = format_version
        kwargs.setdefault("tie_word_embeddings", False)
        if text_config is not None and kwargs.get("attn_implementation") is None:
            # The setter propagates to text_config: keep the base's attention instead of resetting it to None.
            kwargs["attn_implementation"] = text_config._attn_implementation
        super().__init__(**kwargs)
        self.validate_iclm()

    def validate_iclm(self) -> None:
        """Raise a ValueError naming the wrong setting, what it got and what is allowed."""
        _integer("num_domains", self.num_domains, 1, "the number of domain-specific modules")
        _integer("lora_r", self.lora_r, 1, "the LoRA rank; paper: 8")
        _number("lora_alpha", self.lora_alpha, 0, None, "paper: 16", open_low=True)
        _number("lora_dropout", self.lora_dropout, 0, 1, "paper: 0.05", open_high=True)
        _check(
            self.lora_target_modules is None or isinstance(self.lora_target_modules, str)
            or all(isinstance(m, str) and m for m in self.lora_target_modules),
            f"lora_target_modules must be None, a module name or regex (str), or a list of module names, got "
            f"{self.lora_target_modules!r}.",
        )
        _integer("router_dim", self.router_dim, 1, "the router's projection size; paper: 64")
        _number("router_beta", self.router_beta, 0, None, "the VQ commitment weight; paper: 0.25")
        _check(
            self.router_quantization in QUANTIZATIONS,
            f"router_quantization must be one of {QUANTIZATIONS}, got {self.router_quantization!r}.",
        )
        _number("router_temperature", self.router_temperature, 0, None, "τ of soft/gumbel routing", open_low=True)
        _check(
            self.routing_level in ROUTING_LEVELS,
            f"routing_level must be one of {ROUTING_LEVELS}, got {self.routing_level!r}.",
        )
        _check(
            self.aggregation in AGGREGATIONS,
            f"Unknown aggregation {self.aggregation!r}: use one of {AGGREGATIONS}.",
        )
        _number("invariant_weight", self.invariant_weight, 0, 1, "the domain module gets 1 - w")
        for name in ("commitment_loss_weight", "mi_loss_weight", "invariant_loss_weight", "domain_loss_weight"):
            _number(name, getattr(self, name), 0, None, "0 turns the term off")
        _check(self.commitment_weighting in ("input", "token"),
               f"commitment_weighting must be 'input' (the paper's: a mean over inputs) or 'token' (weighted by "
               f"labelled tokens), got {self.commitment_weighting!r}.")
        _check(isinstance(self.use_invariant_module, bool),
               f"use_invariant_module must be True or False, got {self.use_invariant_module!r}.")
        if self.router_prefix_length is not None:
            _integer("router_prefix_length", self.router_prefix_length, 1,
                     "tokens the router reads of a sequence labelled from its start; None refuses such sequences")
        if self.adapter_layers is not None:
            _integer("adapter_layers", self.adapter_layers, 1, "top layers carrying the modules; None: all (paper)")
        if self.mi_dim is not None:
            _integer("mi_dim", self.mi_dim, 2, "rotated features the MI loss compares; None: all (the default)")
        _check(isinstance(self.mi_debiased, bool), f"mi_debiased must be True or False, got {self.mi_debiased!r}.")
        _integer("format_version", self.format_version, 1, "the checkpoint format")
        _check(
            self.format_version <= FORMAT_VERSION,
            f"This checkpoint has ICLM format version {self.format_version}, newer than this code reads "
            f"({FORMAT_VERSION}): upgrade iclm (pip install -U iclm) or load it with the remote code saved beside it.",
        )

    @property
    def module_names(self) -> list[str]:
        """Adapter names, in the order of module ids: the invariant module first, then domain_0 … domain_{N-1}."""
        return ["invariant"] * self.use_invariant_module + [f"domain_{k}" for k in range(self.num_domains)]


__all__ = ["IclmConfig"]
