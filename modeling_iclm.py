"""Independent Causal Language Models (Gendron et al., EMNLP 2024) on one shared frozen base.

Figure 1 of the paper, as this file runs it::

    prompt ──► frozen base (no adapter) ──► router (VQ codebook) ──► route k
                                                                     │
    tokens ──► frozen base + invariant LoRA ───────► h_inv ──┐       │
          └──► frozen base + domain_k LoRA  ───────► h_dom ──┴─► aggregation ──► logits
                                                   (MI loss between h_inv and h_dom)

``IclmModel`` (the backbone, ``model.model``) runs the router and both active modules in ONE base
forward over 2B rows (invariant rows, then routed-domain rows), each row adding its own adapter's LoRA
delta, and returns the aggregated state as ``last_hidden_state``; one KV cache holds both halves.
``IclmForCausalLM`` reads it out with the base's own LM head (and the base's logit transform) and, given
``labels``, returns the whole ICLM objective as ``loss`` (weights in the config, as Mixtral's router loss).
"""

import contextlib
import functools
import math
import numbers
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.masking_utils import create_masks_for_generate, find_packed_sequence_indices
from transformers.utils import ModelOutput, cached_file
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

try:  # Hub remote code: these files sit flat beside this one
    from .aggregation_iclm import Aggregation
    from .configuration_iclm import IclmConfig
    from .lora_iclm import (
        LoraPair,
        RoutedLora,
        RoutingState,
        default_target_modules,
        decoder_layers,
        find_target_layers,
        is_conv1d,
        key_to_path,
        path_to_key,
        save_peft_adapter,
    )
    from .mutual_information_iclm import mutual_information, penalty, token_seed
    from .router_iclm import RouterStateCache, Routing, VectorQuantizedRouter
    from .saving_iclm import atomic_directory, base_fingerprint, fingerprint_differences, refuse_pickles
except ImportError:  # installed as top-level modules (pip install iclm)
    from aggregation_iclm import Aggregation
    from configuration_iclm import IclmConfig
    from lora_iclm import (
        LoraPair,
        RoutedLora,
        RoutingState,
        default_target_modules,
        decoder_layers,
        find_target_layers,
        is_conv1d,
        key_to_path,
        path_to_key,
        save_peft_adapter,
    )
    from mutual_information_iclm import mutual_information, penalty, token_seed
    from router_iclm import RouterStateCache, Routing, VectorQuantizedRouter
    from saving_iclm import atomic_directory, base_fingerprint, fingerprint_differences, refuse_pickles

try:  # clear errors for a missing folder or a Hub id that cannot be resolved offline (the iclm package)
    from iclm.sources import resolve_model_source
except ImportError:  # Hub remote code without the iclm package: transformers' own errors
    def resolve_model_source(name_or_path, **kwargs):
        return str(name_or_path)

_BASE_LOAD_KWARGS = (
    "dtype", "torch_dtype", "device_map", "max_memory", "attn_implementation", "quantization_config",
    "trust_remote_code", "cache_dir", "token", "local_files_only", "proxies", "force_download",
)
_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "proxies", "force_download", "revision", "subfolder")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Flash-attention varlen boundaries describe the flattened batch: the second (domain) half needs them shifted.
_VARLEN_BOUNDARIES = ("cu_seq_lens_q", "cu_seq_lens_k")
_FOUR_D_MASK = (
    "IclmForCausalLM takes a 2-D [batch, past + length] padding mask, got shape {shape}: the router reads each "
    "prompt's padding from it. A 4-D mask is taken only in the decoding steps of a static cache, as generate("
    "cache_implementation='static') passes it (continuing from a cache that holds the prompt and its routes)."
)
_TRAINING_WITHOUT_PROMPT = (
    "IclmForCausalLM.forward was replaced (TRL's fused LM head does this) and the ICLM backbone (model.model) is "
    "called in training mode without `router_mask`, so the router would read "
    "every token, the completion included, and the router, MI and per-module losses would be lost. Train through "
    "IclmForCausalLM.forward(labels=...) (Trainer, accelerate, your own loop), or with TRL use "
    "iclm.trl.IclmSFTTrainer: plain SFTTrainer's fused LM head calls the backbone without labels."
)


# ---------------------------------------------------------------------------------------------- inputs
def sequence_segments(reference: torch.Tensor, attention_mask, position_ids, past: int) -> tuple[torch.Tensor, int]:
    """Each token's sequence index [B, T] and the number of sequences.

    A row is one sequence, unless it packs several (padding-free batches: no attention mask and position ids
    that restart, detected exactly as transformers' masks detect them); each packed sequence gets its own route.
    Position ids are never made up here: without them the base computes its own, as it would alone.
    """
    batch_size = reference.shape[0]
    if attention_mask is None and position_ids is not None and past == 0:
        packed = find_packed_sequence_indices(position_ids)
        if packed is not None:
            counts = packed[:, -1] + 1
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
            return packed + offsets[:, None], int(counts.sum())
    rows = torch.arange(batch_size, device=reference.device)[:, None].expand(reference.shape[:2])
    return rows, batch_size


def cache_length(cache, attention_mask) -> tuple[int, bool]:
    """(tokens the cache holds before this call's, whether this call continues from them).

    A 4-D mask is what generate() passes in the decoding steps of a compileable (static) cache: the call continues
    from the cache, whose length is then not read (a static cache counts on the device: reading it is a sync, and under
    torch.compile a graph break; nothing needs it). In eager mode a 4-D mask on an empty cache is refused."""
    if cache is None:
        return 0, False
    if attention_mask is not None and attention_mask.dim() == 4:
        if not torch.compiler.is_compiling() and int(cache.get_seq_length()) == 0:
            raise ValueError(_FOUR_D_MASK.format(shape=tuple(attention_mask.shape)))
        return 0, True
    past = cache.get_seq_length()
    past = int(past) if torch.is_tensor(past) else past  # a static cache's device-side count
    return past, past > 0


def answer_targets(labels, shift_labels, attended: torch.Tensor, segments: torch.Tensor, count: int,
                   prefix_length: int | None, packed_style: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The label each position predicts ([B, T], -100 where none) and the tokens the router may read.

    The router reads each sequence's prompt: its attended tokens before the first labelled one, so it
    never reads a token it helps predict. A sequence labelled from its start (``labels = input_ids``, packed
    documents) is read on its first ``prefix_length`` tokens instead, and those tokens are dropped from the
    targets, which keeps that guarantee. A padding token is never a target.

    A sequence labelled from its start with ``prefix_length=None`` is refused (ValueError). Flagged per sequence
    for the caller: ``one_token_prompt`` (answer-only labels after a one-token prompt: the router would route on that
    token alone) and ``without_target`` (it had targets and keeps none: labelled from its start, at most
    ``prefix_length`` tokens long).
    """
    if shift_labels is not None:
        targets = shift_labels.to(attended.device)
    elif labels is not None:
        targets = F.pad(labels[:, 1:].to(attended.device), (0, 1), value=-100)
    else:
        return None, attended
    predicted = F.pad(attended[:, 1:], (0, 1), value=True)  # position j predicts token j + 1: a padding one is no target
    targets = targets.masked_fill(~predicted, -100)
    big = attended.shape[1] + 1
    labelled = F.pad(targets[:, :-1] != -100, (1, 0), value=False) & attended  # token j is predicted
    flat = segments.reshape(-1)
    rank = attended.long().cumsum(1) - 1
    start = _segment_min(torch.where(attended, rank, big), segments, count)
    within = rank - start[segments]  # each token's index among its sequence's attended tokens
    first = _segment_min(torch.where(labelled, within, big), segments, count)
    # A sequence's first token is never predicted: with labels given, its own label tells labels = input_ids (set)
    # from an answer-only row with a one-token prompt (-100). Packed rows mark each sequence's first label -100.
    start_labelled = torch.ones_like(first, dtype=torch.bool)
    if labels is not None and shift_labels is None and not packed_style:
        own = (labels.to(attended.device) != -100) & attended & (within == 0)
        start_labelled = _per_sequence(own, flat, count)
    from_start = (first == 0) | ((first == 1) & start_labelled)
    one_token_prompt = (first == 1) & ~start_labelled
    if prefix_length is None and bool(from_start.any()):
        raise ValueError(
            "Some sequences are labelled from their first token (labels = input_ids), which leaves the router no "
            "prompt to read, and router_prefix_length=None refuses them: set IclmConfig.router_prefix_length (the "
            "router then reads their first N tokens, which are not predicted) or give answer-only labels."
        )
    read = torch.where(from_start, prefix_length or 0, first)[segments]
    router_mask = attended & (within < read)
    dropped = from_start[segments] & labelled & (within < read)
    targets = targets.masked_fill(F.pad(dropped[:, 1:], (0, 1), value=False), -100)
    without_target = _per_sequence(labelled, flat, count) & ~_per_sequence(labelled & ~dropped, flat, count)
    return _Targets(targets, router_mask, one_token_prompt, without_target)


# Per-sequence reductions of [B, T] tensors, written without scatters (as router_iclm.segment_sum) so that
# torch.compile's Inductor generates them on every backend: a row per sequence reduces over the row (then each token's
# sequence is its row), packed rows through a one-hot [S, B·T] mask (sequences are numbered across the batch).
def _segment_mask(flat: torch.Tensor, count: int) -> torch.Tensor:
    return flat.reshape(1, -1) == torch.arange(count, device=flat.device)[:, None]


def _segment_min(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """[S] each sequence's smallest value of ``values`` [B, T] (integers; every sequence holds a token)."""
    if count == values.shape[0]:
        return values.amin(1)
    return torch.where(_segment_mask(segments.reshape(-1), count), values.reshape(1, -1), values.max()).amin(1)


def _segment_count(flags: torch.Tensor, flat: torch.Tensor, count: int) -> torch.Tensor:
    """[S] how many Trues of ``flags`` [B, T] each sequence holds (``flat``: each token's sequence)."""
    if count == flags.shape[0]:
        return flags.long().sum(1)
    return (_segment_mask(flat.to(flags.device), count) & flags.reshape(1, -1)).long().sum(1)


def _per_sequence(flags: torch.Tensor, flat: torch.Tensor, count: int) -> torch.Tensor:
    """[S] True for each sequence holding a True in ``flags`` [B, T] (``flat``: each token's sequence)."""
    return _segment_count(flags, flat, count) > 0


class _Targets(tuple):
    """(targets, router_mask) from ``answer_targets``, with per-sequence flags [S]: ``one_token_prompt`` (answer-only
    labels after a one-token prompt) and ``without_target`` (had targets, keeps none after the router's prefix)."""

    def __new__(cls, targets, router_mask, one_token_prompt, without_target):
        made = super().__new__(cls, (targets, router_mask))
        made.one_token_prompt, made.without_target = one_token_prompt, without_target
        return made


def logit_transform(text_config):
    """What the base's ForCausalLM does to ``lm_head(h)``: scaling (Cohere ``logit_scale``, Granite
    ``logits_scaling``, Falcon-H1 ``lm_head_multiplier``) then Gemma-2/3's final soft-capping. None: identity."""
    cap = getattr(text_config, "final_logit_softcapping", None)
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        if getattr(text_config, name, None) is not None:
            scale = getattr(text_config, name)
            break
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    if not cap and (scale is None or scale == 1):
        return None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None and scale != 1:
            logits = logits * scale
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


# --------------------------------------------------------------------------------------------- outputs
@dataclass
class IclmModelOutput(ModelOutput):
    """Output of [`IclmModel`].

    last_hidden_state: the aggregated state the LM head reads [B, T, H]; cache: one KV cache for both
    modules' rows; hidden_states / attentions (``output_hidden_states`` / ``output_attentions``): per layer,
    of the invariant module's rows (of the module that runs, for single-module runs: ``module="domain"`` gives
    the routed domain module's); invariant_states / domain_states: each module's last hidden state [B, T, H]; routes: [S] domain per sequence (S = rows, or packed sequences); token_routes:
    [B, T] domain per token (token-level routing, packed rows); router_embeddings: [S, router_dim];
    commitment_loss: the router's VQ loss (unweighted, mean over sequences); sequence_commitment_losses: [S]
    each sequence's.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    invariant_states: torch.FloatTensor | None = None
    domain_states: torch.FloatTensor | None = None
    routes: torch.LongTensor | None = None
    token_routes: torch.LongTensor | None = None
    router_embeddings: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    sequence_commitment_losses: torch.FloatTensor | None = None


@dataclass
class IclmCausalLMOutput(ModelOutput):
    """Output of [`IclmForCausalLM`]: the standard causal-LM fields first, then ICLM's.

    loss: the whole objective, ``lm_loss + aux_loss``; lm_loss: CE of the aggregated prediction (of the
    module that runs, for single-module runs); aux_loss: the weighted sum of the auxiliary terms (weights in
    the config); commitment_loss, mi_loss, invariant_loss, domain_loss: the raw, unweighted terms (router VQ
    loss, with labels a mean over sequences weighted by their labelled tokens, which keeps it exact under
    gradient accumulation; MI between invariant and routed-domain states at answer-predicting positions; each
    module's own CE through the LM head). Routing and state fields as in [`IclmModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    lm_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    mi_loss: torch.FloatTensor | None = None
    invariant_loss: torch.FloatTensor | None = None
    domain_loss: torch.FloatTensor | None = None
    routes: torch.LongTensor | None = None
    token_routes: torch.LongTensor | None = None
    router_embeddings: torch.FloatTensor | None = None
    invariant_states: torch.FloatTensor | None = None
    domain_states: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------- models
class IclmPreTrainedModel(PreTrainedModel):
    config_class = IclmConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # ICLM's own parts stay float32 on a half-precision base (as PEFT upcasts adapters); routes and MI need it.
    _keep_in_fp32_modules = ["lora", "router", "aggregation"]

    @torch.no_grad()
    def _init_weights(self, module):
        # Only ICLM's own parts: the base is a PreTrainedModel child, initialised (or loaded) by itself.
        if isinstance(module, (LoraPair, VectorQuantizedRouter, Aggregation)):
            module.reset_parameters()


class IclmModel(IclmPreTrainedModel):
    """The ICLM backbone: router, the invariant and routed domain modules on one frozen base, aggregation.

    ``forward(module=...)`` picks what runs: ``None`` the full ICLM, ``"invariant"`` the invariant
    module alone, ``"domain"`` the routed domain module alone, ``k`` (int) domain module k alone,
    ``"base"`` the base without adapters. ``domain_ids`` overrides the router (the oracle router).
    ``router_mask`` [B, T] says which tokens the router may read (default: every attended token).
    """

    def __init__(self, config: IclmConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        if config.text_config is None and base_model is None:
            raise ValueError(
                "IclmConfig has no text_config: build the model with IclmForCausalLM.from_base(base_model) "
                "or give IclmConfig(text_config=<the base's config>)."
            )
        self.base = base_model if base_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        config.text_config = self.base.config
        self.base.requires_grad_(False)
        hidden_size = self.base.config.hidden_size
        if config.lora_target_modules is None:
            config.lora_target_modules = default_target_modules(self.base)
        self.routing = RoutingState(config.module_names)
        self.trunk_layer, adapted = None, None
        self._run: _Run | None = None  # the forward in progress, for the shared trunk's hooks
        if config.adapter_layers is not None:  # shared trunk: adapters on the top K layers only
            prefix, layers = decoder_layers(self.base)
            if not 1 <= config.adapter_layers < len(layers):
                raise ValueError(f"adapter_layers={config.adapter_layers}: this base has {len(layers)} decoder layers; "
                                 f"give 1 … {len(layers) - 1} (None puts the modules on every layer: the paper).")
            start = len(layers) - config.adapter_layers
            object.__setattr__(self, "trunk_layer", layers[start])  # a reference, not a second registered submodule
            self._trunk_stack = (prefix, start)
            layers[start - 1].register_forward_hook(self._trunk_end_hook)
            for layer in layers[start:]:  # each adapted layer gets its per-row inputs (mask, positions) doubled
                layer.register_forward_pre_hook(functools.partial(self._trunk_hook, first=layer is self.trunk_layer),
                                                with_kwargs=True)
            adapted = tuple(f"{prefix}.{i}." for i in range(start, len(layers)))
        self.lora = nn.ModuleDict()
        targets = find_target_layers(self.base, config.lora_target_modules, within=adapted)
        for path, (layer, in_features, out_features) in targets.items():
            routed = RoutedLora(in_features, out_features, config.module_names, config.lora_r, config.lora_alpha,
                                config.lora_dropout, self.routing)
            self.lora[path_to_key(path)] = routed
            layer.register_forward_hook(routed.hook)
        self.router = VectorQuantizedRouter(hidden_size, config.router_dim, config.num_domains, config.router_beta,
                                            config.router_quantization, config.router_temperature, config.routing_level)
        self.aggregation = (
            Aggregation(hidden_size, config.aggregation, config.invariant_weight) if config.use_invariant_module else None
        )
        self.router_state_cache: RouterStateCache | None = None  # see IclmForCausalLM.cache_router_states
        # Set when something replaced IclmForCausalLM.forward (TRL's fused LM head): it calls this backbone in
        # training without labels, so the router would read the completion and the auxiliary losses would be lost.
        self._forward_replaced = False
        # Sequences that had targets and kept none (IclmForCausalLM._check_targets): refused, or inside IclmTrainer
        # (count_rows_without_target=True) counted here for its logs.
        self.count_rows_without_target, self.rows_without_target = False, 0
        self.post_init()

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base.set_input_embeddings(value)

    # ---------------------------------------------------------------------------------------- checks
    def parse_module(self, module) -> tuple[str, int | None]:
        n = self.config.num_domains
        if module is None:
            return "full", None
        if module == "invariant" and not self.config.use_invariant_module:
            raise ValueError("module='invariant': this ICLM was built with use_invariant_module=False.")
        if module in ("invariant", "domain", "base"):
            return module, None
        if isinstance(module, int) and not isinstance(module, bool) and 0 <= module < n:
            return "fixed", module
        raise ValueError(
            f"module must be None (full ICLM), 'invariant', 'domain', 'base' or a domain index in [0, {n - 1}], "
            f"got {module!r}."
        )

    def check_domain_ids(self, domain_ids, count: int) -> torch.Tensor:
        domain_ids = torch.as_tensor(domain_ids, device=self.router.codebook.device)
        n = self.config.num_domains
        if domain_ids.is_floating_point() or domain_ids.dtype == torch.bool:
            raise ValueError(f"domain_ids must be integer domain indices in [0, {n - 1}], got {domain_ids.dtype} "
                             f"values {domain_ids.tolist()}: cast them with .long() after checking they are whole.")
        domain_ids = domain_ids.long().reshape(-1)
        # Under torch.compile only the count is checked (reading the values would break the graph every step).
        if domain_ids.numel() != count or (not torch.compiler.is_compiling() and bool(
                (domain_ids < 0).any() or (domain_ids >= n).any())):
            raise ValueError(
                f"domain_ids must hold one domain index in [0, {n - 1}] per sequence ({count}), got {domain_ids.tolist()}."
            )
        return domain_ids

    @staticmethod
    def check_inputs(input_ids, inputs_embeds, attention_mask, past: int = 0, continuing: bool = False) -> torch.Tensor:
        """The [B, T] reference tensor of the inputs, after checking that the mask fits it (a 4-D mask only when
        ``continuing`` from a cache: a static cache's decoding steps, see ``cache_length``)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids ([batch, length]) or inputs_embeds ([batch, length, hidden]).")
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if reference.dim() != 2:
            raise ValueError(
                f"input_ids must be [batch, length] (inputs_embeds [batch, length, hidden]), got shape "
                f"{tuple(reference.shape)}: add the batch dimension with .unsqueeze(0) or tokenizer(..., return_tensors='pt')."
            )
        batch_size, length = reference.shape
        if length == 0:
            raise ValueError(f"The inputs hold no token (shape {tuple(reference.shape)}): every row needs at least one "
                             "token (drop empty rows before batching; a tokenizer gives none for an empty string).")
        if attention_mask is not None and attention_mask.dim() == 4 and continuing:
            if attention_mask.shape[0] != batch_size:
                raise ValueError(f"The 4-D attention_mask has {attention_mask.shape[0]} rows for a batch of {batch_size}.")
            return reference
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(_FOUR_D_MASK.format(shape=tuple(attention_mask.shape)))
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, past + length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch_size}, {past + length}) "
                f"= (batch, cached {past} + new {length} tokens)."
            )
        return reference

    # ---------------------------------------------------------------------------------------- router
    @torch.no_grad()
    def _router_states(self, input_ids, inputs_embeds, attention_mask, position_ids, kwargs) -> torch.Tensor:
        """The frozen base's states the router reads, without adapters and without dropout: its last hidden states,
        or with a shared trunk the trunk's output (the states entering the first adapted layer; only the trunk runs)."""
        self.routing.clear()
        was_training = self.base.training
        self.base.eval()
        try:
            with self._trunk_only() as trunk:
                last = self.base.base_model(
                    input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                    position_ids=position_ids, use_cache=False, return_dict=True, **kwargs,
                ).last_hidden_state
            return last if trunk is None else trunk["states"]
        finally:
            self.base.train(was_training)

    @contextlib.contextmanager
    def _trunk_only(self):
        """With a shared trunk: the base's decoder stack cut to the trunk's layers while the block runs, and a dict
        whose ``"states"`` receives the trunk's output (the last trunk layer's). Without a trunk: None."""
        if self.trunk_layer is None:
            yield None
            return
        path, start = self._trunk_stack
        holder_path, _, name = path.rpartition(".")
        holder = self.base.get_submodule(holder_path) if holder_path else self.base
        layers = getattr(holder, name)
        captured = {}
        handle = layers[start - 1].register_forward_hook(
            lambda _, __, out: captured.__setitem__("states", out[0] if isinstance(out, tuple) else out))
        setattr(holder, name, layers[:start])  # a ModuleList of the trunk's layers: the base stops after them
        try:
            yield captured
        finally:
            setattr(holder, name, layers)
            handle.remove()

    def route(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, router_mask=None,
              domain_ids=None, **kwargs) -> Routing:
        """Run the router alone over the tokens ``router_mask`` allows (default: every attended token)."""
        reference = self.check_inputs(input_ids, inputs_embeds, attention_mask)
        segments, count = sequence_segments(reference, attention_mask, position_ids, 0)
        if router_mask is None:
            router_mask = torch.ones_like(reference, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if domain_ids is not None:
            domain_ids = self.check_domain_ids(domain_ids, count)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("output_hidden_states", "output_attentions")}
        cache = self.router_state_cache
        keys = None
        if cache is not None and input_ids is not None and count == reference.shape[0]:
            keys = cache.keys(input_ids, router_mask)
            found = cache.lookup(keys)
            if found is not None:  # every prompt seen before: no base pass at all
                states, prompt_mask = cache.stack(found)
                return self.router(states, prompt_mask, domain_ids)
        if position_ids is None and attention_mask is not None:
            # Positions from the mask: a prompt routes the same however much left padding it has (as in generate()).
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        states = self._router_states(input_ids, inputs_embeds, attention_mask, position_ids, kwargs)
        if keys is not None:
            cache.store(keys, states, router_mask.to(states.device))
        return self.router(states, router_mask.to(states.device), domain_ids, segments.to(states.device), count)

    @staticmethod
    def _cached_routes(cache: Cache, batch_size: int) -> torch.Tensor:
        routes = getattr(cache, "iclm_routes", None)
        if routes is None or routes.numel() != batch_size:
            raise ValueError(
                "The router reads the whole prompt: continuing from a cache needs the prompt's routes. Pass the cache "
                "an ICLM forward or generate() returned (it keeps them), or domain_ids=<routes of the first call>."
            )
        return routes

    @staticmethod
    def _cache_rows(cache: Cache, layer: int = -1) -> int | None:
        """Rows a cache layer holds (the last layer's by default: with a shared trunk only the top layers are doubled)."""
        layers = getattr(cache, "layers", None)
        keys = getattr(layers[layer], "keys", None) if layers else None
        return None if keys is None or not torch.is_tensor(keys) or keys.numel() == 0 else keys.shape[0]

    # --------------------------------------------------------------------------------------- forward
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        domain_ids: torch.LongTensor | None = None,
        module: str | int | None = None,
        router_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> IclmModelOutput:
        # 1. Inputs: what runs, over which sequences, and the routes known before the pass (given, cached, fixed).
        inputs = dict(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      position_ids=position_ids)
        run = self._plan(inputs, cache, use_cache, domain_ids, module, router_mask, kwargs)
        # 2. Routes: the router's own base pass, before the adapted one (a shared trunk routes inside the pass,
        #    from its own output, when the pass reaches the first adapted layer: see _trunk_hook).
        if run.trunk is None:
            self.routing.set(self._module_ids(run))
        # 3. One base pass: over 2B rows for the full ICLM (invariant rows, then domain rows), each adding its adapter.
        outputs = self._base_pass(run, inputs, cache, kwargs)
        # 4. States: each module's last hidden state, aggregated.
        hidden = outputs.last_hidden_state
        if run.doubled:
            h_inv, h_dom = hidden.split(run.batch_size)
            last = self.aggregation.mix(h_inv, h_dom)
        else:
            h_inv, h_dom, last = (hidden, None, hidden) if run.kind == "invariant" else (None, hidden, hidden)
        # 5. Outputs: per-layer states of the invariant rows, the cache (keeping its routes), the routing.
        return self._output(run, outputs, h_inv, h_dom, last)

    def _plan(self, inputs: dict, cache, use_cache, domain_ids, module, router_mask, kwargs) -> "_Run":
        """Check the inputs and set up one forward: what runs, the sequences, the routes known before the pass."""
        kind, fixed = self.parse_module(module)
        past, continuing = cache_length(cache, inputs["attention_mask"])
        reference = self.check_inputs(inputs["input_ids"], inputs["inputs_embeds"], inputs["attention_mask"], past,
                                      continuing)
        batch_size, length = reference.shape
        segments, count = sequence_segments(reference, inputs["attention_mask"], inputs["position_ids"], past)
        if count != batch_size and use_cache:
            raise ValueError("use_cache=True with packed sequences (no attention mask, restarting position_ids): a KV "
                             "cache cannot hold them apart. Pass use_cache=False, or pad the sequences.")
        if use_cache is None:
            # A cache would also switch off transformers' packed-sequence masks (they apply only without one).
            use_cache = self.config.use_cache and count == batch_size and not (
                self.training and self.base.is_activation_checkpointing)
        doubled = kind == "full" and self.config.use_invariant_module
        rows = self._cache_rows(cache) if continuing else None
        if rows is not None and rows != batch_size * (2 if doubled else 1):
            raise ValueError(
                f"This cache holds {rows} rows for a batch of {batch_size}: it was built by another module= run "
                f"(the full ICLM caches 2 rows per input, single modules 1). Continue with the same module=."
            )
        if domain_ids is not None:
            domain_ids = self.check_domain_ids(domain_ids, count)
            if kind == "fixed" and not torch.compiler.is_compiling() and bool((domain_ids != fixed).any()):
                raise ValueError(f"module={fixed} runs domain module {fixed} on every row; domain_ids "
                                 f"{domain_ids.tolist()} contradict it. Pass one or the other.")
        routes = domain_ids
        if kind in ("full", "domain") and continuing and routes is None:
            routes = self._cached_routes(cache, batch_size)
        if kind == "fixed":
            routes = torch.full((count,), fixed, dtype=torch.long, device=reference.device)
        needs_router = kind in ("full", "domain") and not continuing and (routes is None or router_mask is not None)
        if needs_router and router_mask is None and self.training and self._forward_replaced:
            raise ValueError(_TRAINING_WITHOUT_PROMPT)
        return _Run(kind=kind, batch_size=batch_size, length=length, device=reference.device, segments=segments,
                    count=count, use_cache=use_cache, doubled=doubled, routes=routes, needs_router=needs_router,
                    router_call=(inputs, router_mask, domain_ids, kwargs),
                    trunk=self.trunk_layer if self.trunk_layer is not None and kind != "base" else None)

    def _module_ids(self, run: "_Run", trunk_states: torch.Tensor | None = None) -> torch.Tensor | None:
        """Route (by the router's own base pass, or from the shared trunk's output) and give each row (or token) of the
        adapted pass its module: 0 the invariant, 1 + k domain module k. Once per forward (checkpoint recomputes
        reuse it); None for the base alone."""
        if run.module_ids is not None or run.kind == "base":
            return run.module_ids
        if run.needs_router:
            inputs, router_mask, domain_ids, kwargs = run.router_call
            if trunk_states is None:
                run.routing = self.route(**inputs, router_mask=router_mask, domain_ids=domain_ids, **kwargs)
            else:
                run.routing = self.router(trunk_states.detach(), router_mask.to(trunk_states.device), domain_ids,
                                          run.segments.to(trunk_states.device), run.count)
            run.routes, run.token_routes = run.routing.routes, run.routing.token_routes
        if run.routes is not None and run.token_routes is None and run.count != run.batch_size:
            run.token_routes = run.routes.to(run.device)[run.segments]  # each packed token: its sequence's route
        offset = int(self.config.use_invariant_module)
        domains = run.token_routes if run.token_routes is not None else run.routes
        domain_rows = None if domains is None else domains.to(run.device) + offset
        if run.kind == "invariant":
            run.module_ids = torch.zeros(run.batch_size, dtype=torch.long, device=run.device)
        elif run.doubled:
            run.module_ids = torch.cat([torch.zeros_like(domain_rows), domain_rows])
        else:
            run.module_ids = domain_rows
        return run.module_ids

    def _base_pass(self, run: "_Run", inputs: dict, cache, kwargs):
        """The one base forward. Full ICLM: the per-row inputs doubled (with a shared trunk, doubled where the adapters
        start, see _trunk_hook). The trunk runs without dropout, so its routes are the eval routes."""
        flat = run.batch_size * run.length
        if run.doubled and run.trunk is None:
            inputs = {k: _twice(v, k, run.batch_size, flat) for k, v in inputs.items()}
            kwargs = {k: _twice(v, k, run.batch_size, flat) if k in _VARLEN_BOUNDARIES + ("seq_idx",) else v
                      for k, v in kwargs.items()}
        was_training = self.base.training
        if run.trunk is not None:
            self._run, run.flat, run.base_training = run, flat, was_training
            self.base.eval()  # back to training mode after the trunk's last layer (_trunk_end_hook)
        try:
            return self.base.base_model(**inputs, cache=cache, use_cache=run.use_cache, return_dict=True, **kwargs)
        finally:
            self.base.train(was_training)
            # Gradient checkpointing re-runs the layers (and their hooks) in backward: keep the routes for it.
            if not (self.training and self.base.is_activation_checkpointing):
                self.routing.clear()
                self._run = None

    def _output(self, run: "_Run", outputs, h_inv, h_dom, last) -> IclmModelOutput:
        def invariant_half(states):
            """Per-layer states of the invariant rows (a shared trunk's bottom layers hold B rows: all of them)."""
            if states is None or not run.doubled:
                return states
            return tuple(None if s is None else s[: run.batch_size] for s in states)  # None: a layer not asked for

        new_cache = outputs.cache if run.use_cache else None
        if new_cache is not None and run.kind in ("full", "domain") and run.routes is not None and (
                run.count == run.batch_size):
            new_cache.iclm_routes = run.routes  # continuing from this cache (multi-turn, assisted decoding) keeps them
        routing = run.routing
        return IclmModelOutput(
            last_hidden_state=last, cache=new_cache, hidden_states=invariant_half(getattr(outputs, "hidden_states", None)),
            attentions=invariant_half(getattr(outputs, "attentions", None)),
            invariant_states=h_inv, domain_states=h_dom, routes=run.routes, token_routes=run.token_routes,
            router_embeddings=None if routing is None else routing.embeddings,
            commitment_loss=None if routing is None else routing.commitment_loss,
            sequence_commitment_losses=None if routing is None else routing.sequence_losses,
        )

    # ---------------------------------------------------------------------------------- shared trunk
    def _trunk_end_hook(self, layer, args, output):
        """Forward hook of the trunk's last layer: the adapted layers run in the base's own mode (dropout in training)."""
        run = self._run
        if run is not None:
            self.base.train(run.base_training)

    def _trunk_hook(self, layer, args, kwargs, first: bool):
        """Forward pre-hook of the adapted layers (shared trunk). At the first one the router reads the trunk's
        states and the adapters get their rows' modules, and the hidden states are doubled into invariant and domain
        rows; every adapted layer gets the per-row inputs the decoder passes to all layers (mask, positions) doubled."""
        run = self._run
        if run is None:
            return None
        if first:
            self.routing.set(self._module_ids(run, args[0] if args else kwargs["hidden_states"]))
        if not run.doubled:
            return None
        return (tuple(_twice(a, None, run.batch_size, run.flat) for a in args),
                {k: _twice(v, k, run.batch_size, run.flat) for k, v in kwargs.items()})


@dataclass
class _Run:
    """One ``IclmModel.forward`` call: what runs, over which sequences, and the routes once known (set by its steps,
    read by the shared trunk's hooks)."""

    kind: str  # "full", "invariant", "domain", "fixed" (one domain module), "base"
    batch_size: int
    length: int
    device: torch.device
    segments: torch.Tensor  # [B, T] each token's sequence
    count: int  # sequences (rows, or packed sequences)
    use_cache: bool
    doubled: bool  # invariant and domain rows in one pass
    needs_router: bool
    router_call: tuple  # (inputs, router_mask, domain_ids, kwargs): what the router reads
    trunk: nn.Module | None  # the first adapted layer, with a shared trunk
    routes: torch.Tensor | None = None
    token_routes: torch.Tensor | None = None
    routing: Routing | None = None
    module_ids: torch.Tensor | None = None
    flat: int = 0
    base_training: bool = False


def _twice(value, name, batch_size: int, flat: int):
    """``value`` for the invariant rows then the domain rows: per-row tensors (and tuples of them) repeated along the
    batch; flash-attention boundaries of the flattened batch continued for the copy; anything else unchanged."""
    if name in _VARLEN_BOUNDARIES and torch.is_tensor(value):
        return torch.cat([value, value[1:] + flat])
    if torch.is_tensor(value):
        return torch.cat([value, value]) if value.dim() >= 1 and value.shape[0] == batch_size else value
    if isinstance(value, tuple):
        return tuple(_twice(v, None, batch_size, flat) for v in value)
    if isinstance(value, dict):  # per-layer-type masks (sliding-window bases), as generate() builds for static caches
        return {k: _twice(v, None, batch_size, flat) for k, v in value.items()}
    return value


def _unreadable(path, error) -> str:
    return (f"{path} is not a readable safetensors checkpoint ({type(error).__name__}: {error}). The save was "
            "interrupted or the file is corrupt (or was never safetensors): save the model again or restore a copy.")


def _sum_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")


class IclmForCausalLM(IclmPreTrainedModel, GenerationMixin):
    """A frozen causal LM + one invariant and N routed domain LoRA modules, aggregated into logits.

    ``forward`` takes every argument a transformers causal LM takes (``cache``/``past_key_values``,
    ``labels``/``shift_labels``, ``logits_to_keep``, ``return_dict``, attention kwargs …) plus ``module``
    and ``domain_ids`` (see [`IclmModel`]). With labels, ``loss`` is the whole ICLM objective.
    """

    def __init__(self, config: IclmConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.model = IclmModel(config, base_model)
        self._logit_transform = logit_transform(self.model.base.config)
        self.tokenizer_source: str | None = None  # saved beside the model when known
        self.post_init()
        if config.base_model_name_or_path:
            # The base reloads from its own source: checkpoints (and Trainer checkpoints) keep only trained parts.
            self._keys_to_ignore_on_save = {f"model.base.{k}" for k in self.model.base.state_dict()}

    def __setattr__(self, name, value):
        if name == "forward" and "model" in self._modules:  # a wrapper patching the forward (see IclmModel)
            self.model._forward_replaced = True
        super().__setattr__(name, value)

    # Figure 1's parts, by name.
    base = property(lambda self: self.model.base)
    lora = property(lambda self: self.model.lora)
    router = property(lambda self: self.model.router)
    aggregation = property(lambda self: self.model.aggregation)
    routing = property(lambda self: self.model.routing)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_base(cls, base, num_domains: int = 2, **config_overrides) -> "IclmForCausalLM":
        """Wrap a causal LM (a ``PreTrainedModel``, or an id/path to load) as an ICLM with ``num_domains`` modules.

        A base given by id/path (or loaded from one) is stored by reference: checkpoints keep only the
        trained parts. Pass ``base_model_name_or_path=None`` to store the base in full.
        """
        if isinstance(base, (str, os.PathLike)):
            base = AutoModelForCausalLM.from_pretrained(resolve_model_source(base, option="from_base: base"))
        if not isinstance(base, PreTrainedModel) or base.get_output_embeddings() is None:
            raise ValueError(
                f"from_base needs a causal LM with an LM head (e.g. AutoModelForCausalLM), got {type(base).__name__}."
            )
        config_overrides.setdefault("base_model_name_or_path", base.name_or_path or None)
        config_overrides.setdefault("base_fingerprint", base_fingerprint(base))
        config = IclmConfig(text_config=base.config, num_domains=num_domains, **config_overrides)
        model = cls(config, base_model=base)
        model.train(base.training)  # an ICLM of a base in eval mode starts in eval mode (no LoRA dropout)
        model._place_like_base()
        model._check_base()
        if base.generation_config is not None:
            model.generation_config = base.generation_config
        model.tokenizer_source = base.name_or_path or None
        return model

    def _place_like_base(self) -> None:
        """Put each adapter on its layer's device, router and aggregation beside the LM head."""
        layers = dict(self.base.named_modules())
        for key, routed in self.lora.items():
            routed.to(next(layers[key_to_path(key)].parameters()).device)
        head_device = self.base.get_output_embeddings().weight.device
        self.router.to(head_device)
        if self.aggregation is not None:
            self.aggregation.to(head_device)

    @torch.no_grad()
    def _check_base(self) -> None:
        """Two 4-token probes, refused clearly if they fail: the base is causal (no position reads a later token:
        a BERT encoder or masked LM would let the model read its answers), and the head reproduces the base's own
        logits (a base that transforms them in an unknown way would make even ``module="base"`` differ)."""
        weight = self.get_output_embeddings().weight
        if weight.device.type == "meta":
            return
        vocab = self.base.config.get_text_config().vocab_size
        ids = (torch.arange(3, 7, device=self.base.get_input_embeddings().weight.device) % vocab)[None]
        later = ids.clone()
        later[0, -1] = (later[0, -1] + 1) % vocab
        was_training = self.base.training
        self.base.eval()
        try:
            expected = self.base(input_ids=ids).logits
            changed = self.base(input_ids=later).logits
            got = self.head(self.base.base_model(input_ids=ids).last_hidden_state)
        finally:
            self.base.train(was_training)
        if not torch.allclose(expected[:, :-1].float(), changed[:, :-1].float(), rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"The {type(self.base).__name__} base is not causal: its predictions for a position change with a "
                "later token (a bidirectional encoder such as BERT or a masked LM, or a decoder built without "
                "is_decoder=True). ICLM needs a causal LM (Llama, Qwen, Mistral, GPT-2, …): every position must "
                "predict the next token from earlier ones only."
            )
        try:
            torch.testing.assert_close(got.float(), expected.float(), rtol=1e-3, atol=1e-3)
        except AssertionError as error:
            raise ValueError(
                f"The {type(self.base).__name__} base computes its logits in a way ICLM does not reproduce (its LM head "
                f"plus the known logit scalings and soft-capping give other values: {str(error).splitlines()[2:4]}). "
                "ICLM would change this base's predictions even untrained: it cannot wrap it."
            ) from error

    @property
    def vocab_size(self) -> int:
        return self.base.config.get_text_config().vocab_size

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.base.set_output_embeddings(new_embeddings)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resize the base's embeddings and LM head (tied or not); the config's ``text_config`` follows."""
        embeddings = self.base.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.text_config = self.base.config
        if self._keys_to_ignore_on_save:  # a base by reference: its reloaded embeddings would lack the new rows
            self._keys_to_ignore_on_save -= set(self._embedding_keys())
        return embeddings

    def _embedding_keys(self) -> list[str]:
        """State-dict keys of the input embeddings and LM head weights."""
        wanted = {id(self.get_input_embeddings().weight), id(self.get_output_embeddings().weight)}
        return [f"model.base.{k}" for k, v in self.base.state_dict(keep_vars=True).items() if id(v) in wanted]

    # ------------------------------------------------------------------------------ continual learning
    @torch.no_grad()
    def add_domain_module(self, prompt_embeddings: torch.Tensor | None = None) -> str:
        """Grow the model by one domain module for a new distribution (beyond the paper): a fresh adapter on every
        target layer (B = 0, so nothing changes until it trains) and a new centroid, at the mean of
        ``prompt_embeddings`` (router embeddings of the new data's prompts, ``model.route(...).embeddings``) or
        random. Returns the module's name. Combine with ``freeze_modules`` to keep the old ones as they are."""
        model, config = self.model, self.config
        centroid = self._new_centroid(prompt_embeddings)
        name = f"domain_{config.num_domains}"
        for routed in model.lora.values():
            first = next(iter(routed.adapters.values()))
            routed.adapters[name] = LoraPair(first.lora_A.shape[1], first.lora_B.shape[0], config.lora_r).to(first.lora_A)
        codebook = self.router.codebook
        grown = nn.Parameter(torch.cat([codebook.detach(), centroid[None]]), requires_grad=codebook.requires_grad)
        self.router.codebook = grown
        config.num_domains += 1
        model.routing.module_names = config.module_names
        frozen = getattr(model, "_frozen_centroids", None)
        if frozen is not None:  # the new centroid is free, the frozen ones stay frozen (on the grown codebook)
            self._freeze_centroids(torch.cat([frozen, frozen.new_zeros(1)]))
        return name

    def _new_centroid(self, prompt_embeddings) -> torch.Tensor:
        """The new module's centroid: the normalised mean of ``prompt_embeddings`` [n >= 1, router_dim] (finite), or
        random; anything else is refused with what to pass instead."""
        codebook = self.router.codebook
        if prompt_embeddings is None:
            return F.normalize(torch.randn(codebook.shape[1], device=codebook.device), dim=0).to(codebook)
        dim, usage = codebook.shape[1], "pass model.route(input_ids=..., attention_mask=..., labels=...).embeddings of " \
            "the new distribution's prompts (or nothing, for a random centroid)"
        if isinstance(prompt_embeddings, Routing):
            raise TypeError(f"add_domain_module got the Routing object itself: pass its .embeddings ([n, {dim}]).")
        if not torch.is_tensor(prompt_embeddings) or not prompt_embeddings.is_floating_point():
            kind = type(prompt_embeddings).__name__ if not torch.is_tensor(prompt_embeddings) else prompt_embeddings.dtype
            raise TypeError(f"add_domain_module takes router embeddings as a float tensor [n, {dim}], got {kind}: {usage}.")
        shape = tuple(prompt_embeddings.shape)
        if prompt_embeddings.dim() != 2 or shape[1] != dim:
            hint = ""
            if shape and shape[-1] == self.base.config.get_text_config().hidden_size:
                hint = " These look like hidden states (the base's hidden size), not router embeddings."
            elif shape and shape[-1] == self.vocab_size:
                hint = " These look like logits (the vocabulary size), not router embeddings."
            elif prompt_embeddings.dim() == 1:
                hint = " One embedding needs its batch dimension: .unsqueeze(0)."
            raise ValueError(f"add_domain_module takes router embeddings [n, router_dim={dim}], got shape {shape}.{hint} "
                             f"{usage[0].upper()}{usage[1:]}.")
        if shape[0] == 0:
            raise ValueError(f"add_domain_module got no embedding (shape {shape}): its centroid would be NaN and capture "
                             f"every prompt. {usage[0].upper()}{usage[1:]}.")
        if not bool(torch.isfinite(prompt_embeddings).all()):
            raise ValueError("add_domain_module got NaN or infinite router embeddings: the centroid would capture every "
                             "prompt (or none). Check the prompts they were computed from.")
        return F.normalize(prompt_embeddings.float().mean(0), dim=0).to(codebook)

    def freeze_modules(self, names: list[str], router: bool = True, aggregation: bool = True) -> None:
        """Stop training the named modules (``"invariant"``, ``"domain_k"``): their adapters no longer get
        gradients. With ``router=True`` the router's projection stops too and the frozen domains' centroids get no
        gradient (a hook zeroes their rows; IclmTrainer's dead-centroid restarts skip them), so the distributions
        they captured keep their routes. With ``aggregation=True`` the shared aggregation map stops too (training it
        would change every old output)."""
        unknown = [n for n in names if n not in self.config.module_names]
        if unknown:
            raise ValueError(f"freeze_modules: no module(s) {unknown}; this model has {self.config.module_names}.")
        for routed in self.lora.values():
            for name, pair in routed.adapters.items():
                pair.requires_grad_(name not in names)
        if self.aggregation is not None:
            self.aggregation.requires_grad_(not aggregation)
        if not router:
            self.model._frozen_centroids = None
            return
        self.router.projection.requires_grad_(False)
        self._freeze_centroids(torch.tensor([f"domain_{k}" in names for k in range(self.config.num_domains)],
                                            device=self.router.codebook.device))

    def _freeze_centroids(self, frozen: torch.Tensor) -> None:
        """Zero the codebook gradient of the rows marked in ``frozen`` [N] (a hook on the current codebook)."""
        model = self.model
        model._frozen_centroids = frozen
        if getattr(model, "_codebook_hook", None) is not None:
            model._codebook_hook.remove()
        model._codebook_hook = self.router.codebook.register_hook(lambda grad: grad * (~frozen).to(grad)[:, None])

    @torch.no_grad()
    def anchor_invariant(self, weight: float) -> None:
        """Regularise the invariant module toward its current weights while it trains on new data: ``forward`` adds
        ``weight · Σ‖θ − θ_now‖²`` over its LoRA matrices to ``aux_loss`` (0 removes the anchor). Not saved."""
        if not self.config.use_invariant_module:
            raise ValueError("anchor_invariant: this ICLM has no invariant module.")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"anchor_invariant takes a finite number >= 0 (the weight of the L2 anchor; 0 removes it), "
                             f"got {weight!r}.")
        self.model._invariant_anchor = None if weight == 0 else (float(weight), {
            key: (routed.adapters["invariant"].lora_A.detach().clone(), routed.adapters["invariant"].lora_B.detach().clone())
            for key, routed in self.lora.items()})

    def _anchor_penalty(self) -> torch.Tensor | None:
        anchor = getattr(self.model, "_invariant_anchor", None)
        if anchor is None:
            return None
        weight, saved = anchor
        total = sum(((self.lora[key].adapters["invariant"].lora_A - a) ** 2).sum()
                    + ((self.lora[key].adapters["invariant"].lora_B - b) ** 2).sum() for key, (a, b) in saved.items())
        return weight * total

    def cache_router_states(self, enabled: bool = True) -> None:
        """Keep the frozen base's prompt states for the router (see ``RouterStateCache``): after a prompt's first
        pass, routing it costs no base forward. Input-level routing only (token-level routes need every position)."""
        if enabled and self.config.routing_level != "input":
            raise ValueError("cache_router_states needs routing_level='input': token-level routes are per position.")
        self.model.router_state_cache = RouterStateCache() if enabled else None

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The base's LM head and its own logit transform (soft-capping, scaling)."""
        logits = self.get_output_embeddings()(hidden_states)
        return logits if self._logit_transform is None else self._logit_transform(logits)

    # ------------------------------------------------------------------------------------------ forward
    def route(self, input_ids=None, attention_mask=None, labels=None, domain_ids=None, inputs_embeds=None,
              position_ids=None) -> Routing:
        """Run the router alone, reading what ``forward`` would read with these labels: routes, per-token routes,
        VQ loss and pooled embeddings."""
        reference = self.model.check_inputs(input_ids, inputs_embeds, attention_mask)
        segments, count = sequence_segments(reference, attention_mask, position_ids, 0)
        attended = torch.ones_like(reference, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        found = answer_targets(labels, None, attended, segments, count, self.config.router_prefix_length,
                               packed_style=attention_mask is None and position_ids is not None)
        if found[0] is not None and domain_ids is None:
            self._refuse_one_token_prompts(found)
        return self.model.route(input_ids, attention_mask, position_ids, inputs_embeds, found[1], domain_ids)

    @torch.no_grad()
    def count_target_sequences(self, input_ids=None, attention_mask=None, labels=None, position_ids=None,
                               inputs_embeds=None, shift_labels=None, **_) -> int:
        """How many sequences of this batch keep at least one target (the per-input VQ term's count)."""
        if labels is None and shift_labels is None:
            return 0
        reference = self.model.check_inputs(input_ids, inputs_embeds, attention_mask)
        segments, count = sequence_segments(reference, attention_mask, position_ids, 0)
        attended = torch.ones_like(reference, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        targets, _ = answer_targets(labels, shift_labels, attended, segments, count, self.config.router_prefix_length,
                                    packed_style=attention_mask is None and position_ids is not None)
        return int(_per_sequence(targets != -100, segments.reshape(-1), count).sum())

    @staticmethod
    def _refuse_one_token_prompts(found) -> None:
        if bool(found.one_token_prompt.any()):
            rows = found.one_token_prompt.nonzero().flatten().tolist()
            raise ValueError(
                f"Sequence(s) {rows[:8]} have a one-token prompt (labels from their second token): the router would "
                "route them on that one token. Give each a prompt of at least 2 tokens (-100 on every prompt token), "
                "or route them yourself and pass domain_ids (e.g. model.route(input_ids=<the prompts>).routes)."
            )

    def _check_targets(self, found, routed: bool) -> None:
        """Refuse what would train silently wrong: one-token prompts the router would read, and sequences that had
        targets and keep none after the router's prefix (inside IclmTrainer these are counted, not refused)."""
        # One read of both counts (a sync; under torch.compile one graph break).
        one_token, without = torch.stack([found.one_token_prompt.sum(), found.without_target.sum()]).tolist()
        if routed and one_token:
            self._refuse_one_token_prompts(found)
        if not without:
            return
        if self.model.count_rows_without_target:
            self.model.rows_without_target += without
            return
        raise ValueError(
            f"{without} sequence(s) labelled from their start (labels = input_ids, a language-modelling collator) "
            f"have at most router_prefix_length={self.config.router_prefix_length} tokens: the router reads those "
            "tokens, which are then not predicted, so nothing is left to train on (the loss would be a silent 0). "
            "Give longer rows, answer-only labels (-100 on a prompt), or a smaller IclmConfig.router_prefix_length."
        )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        domain_ids: torch.LongTensor | None = None,
        module: str | int | None = None,
        **kwargs,
    ) -> IclmCausalLMOutput:
        shift_labels = kwargs.pop("shift_labels", None)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        num_sequences_in_batch = kwargs.pop("num_sequences_in_batch", None)  # IclmTrainer: the per-input VQ's count
        for flag in ("output_hidden_states", "output_attentions"):
            if kwargs.get(flag) is None and getattr(self.config, flag, False):
                kwargs[flag] = True
        past, continuing = cache_length(cache, attention_mask)
        reference = self.model.check_inputs(input_ids, inputs_embeds, attention_mask, past, continuing)
        batch_size, length = reference.shape
        if attention_mask is not None and attention_mask.dim() == 4 and (labels is not None or shift_labels is not None):
            raise ValueError("labels with a 4-D attention_mask: the targets need each row's padding, from a 2-D mask.")
        for name, given in (("labels", labels), ("shift_labels", shift_labels)):
            if given is not None and tuple(given.shape) != (batch_size, length):
                raise ValueError(f"{name} has shape {tuple(given.shape)}; expected the inputs' ({batch_size}, {length}).")
        segments, count = sequence_segments(reference, attention_mask, position_ids, past)
        attended = (torch.ones_like(reference, dtype=torch.bool) if attention_mask is None or attention_mask.dim() != 2
                    else attention_mask[:, -length:].bool())
        found = answer_targets(labels, shift_labels, attended, segments, count, self.config.router_prefix_length,
                               packed_style=attention_mask is None and position_ids is not None)
        targets, router_mask = found
        if targets is not None:
            self._check_targets(found, routed=domain_ids is None and module in (None, "domain") and not continuing)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, domain_ids=domain_ids, module=module,
            router_mask=router_mask if targets is not None else (attended if domain_ids is None and not continuing else None),
            return_dict=True, **kwargs,
        )
        h_inv, h_dom = outputs.invariant_states, outputs.domain_states
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep > 0 else (
            logits_to_keep if isinstance(logits_to_keep, torch.Tensor) else slice(None))
        if h_inv is not None and h_dom is not None and self.config.aggregation != "hidden_states":
            logits = self.aggregation.logits(h_inv[:, keep], h_dom[:, keep], self.head)
        else:
            logits = self.head(outputs.last_hidden_state[:, keep])
        losses = (dict(commitment_loss=outputs.commitment_loss) if targets is None
                  else self._losses(outputs, targets, segments, count, module, num_items_in_batch,
                                    num_sequences_in_batch, mi_seed=None if input_ids is None else token_seed(input_ids,
                                                                                         attention_mask)))
        return IclmCausalLMOutput(
            logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            routes=outputs.routes, token_routes=outputs.token_routes,
            router_embeddings=outputs.router_embeddings, invariant_states=h_inv, domain_states=h_dom, **losses,
        )

    def _losses(self, outputs, targets, segments, count: int, module, num_items_in_batch,
                num_sequences_in_batch=None, mi_seed=None) -> dict:
        """The ICLM objective at the positions that predict labelled tokens: ``loss = lm_loss + aux_loss`` and its raw
        terms. Token terms are normalised by the accumulated batch's token count; per-batch terms (VQ, MI) weigh by
        this micro-batch's share of it (the per-input VQ by its share of the sequences with targets, when the trainer
        counts them: ``num_sequences_in_batch``), so gradient accumulation and ranks give the full-batch objective."""
        config, h_inv, h_dom = self.config, outputs.invariant_states, outputs.domain_states
        answer = targets != -100
        # The predicting positions, read once (a data-dependent shape: under torch.compile, one graph break).
        index = answer.reshape(-1).nonzero().squeeze(1)

        def at_answers(states: torch.Tensor) -> torch.Tensor:
            return states.reshape(-1, states.shape[-1]).index_select(0, index.to(states.device))

        picked = targets.reshape(-1).index_select(0, index)
        tokens = answer.sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else tokens.clamp_min(1)
        share = 1.0 if num_items_in_batch is None else tokens / num_items_in_batch
        terms = dict(mi_loss=None, invariant_loss=None, domain_loss=None)
        aux_loss = torch.zeros((), device=outputs.last_hidden_state.device)
        if h_inv is not None and h_dom is not None:
            a_inv, a_dom = at_answers(h_inv), at_answers(h_dom)
            mixed = at_answers(outputs.last_hidden_state) if config.aggregation == "hidden_states" else None
            lm_loss = _sum_cross_entropy(self.aggregation.logits(a_inv, a_dom, self.head, mixed), picked) / denominator
            terms["invariant_loss"] = _sum_cross_entropy(self.head(a_inv), picked) / denominator
            terms["domain_loss"] = _sum_cross_entropy(self.head(a_dom), picked) / denominator
            terms["mi_loss"] = penalty(a_inv, a_dom, config.mi_dim, config.mi_debiased, seed=mi_seed)
            aux_loss = (config.invariant_loss_weight * terms["invariant_loss"]
                        + config.domain_loss_weight * terms["domain_loss"] + share * config.mi_loss_weight * terms["mi_loss"])
        else:
            lm_loss = _sum_cross_entropy(self.head(at_answers(outputs.last_hidden_state)), picked) / denominator
            if h_inv is not None:
                terms["invariant_loss"] = lm_loss
            elif module != "base":
                terms["domain_loss"] = lm_loss  # the routed (or fixed) domain module: reported, not counted twice
        commitment_loss, vq_share = outputs.commitment_loss, share
        if outputs.sequence_commitment_losses is not None and index.numel() > 0:
            # Per input (the paper's): a mean over the sequences with targets; per token: weighted by their targets.
            per_sequence = _segment_count(answer, segments.reshape(-1), count)
            weights = (per_sequence if config.commitment_weighting == "token" else per_sequence > 0).float()
            weights = weights.to(outputs.sequence_commitment_losses.device)
            commitment_loss = (outputs.sequence_commitment_losses * weights).sum() / weights.sum()
            if config.commitment_weighting == "input" and num_sequences_in_batch:
                vq_share = weights.sum() / num_sequences_in_batch
        if commitment_loss is not None and module is None:
            aux_loss = aux_loss + vq_share * config.commitment_loss_weight * commitment_loss
        anchor = self._anchor_penalty() if module is None else None
        if anchor is not None:
            aux_loss = aux_loss + share * anchor
        return dict(loss=lm_loss + aux_loss, lm_loss=lm_loss, aux_loss=aux_loss, commitment_loss=commitment_loss, **terms)

    # --------------------------------------------------------------------------------------- generation
    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`; token-level routing needs the KV cache (see the check below)."""
        config = kwargs.get("generation_config") or self.generation_config
        use_cache = kwargs.get("use_cache", getattr(config, "use_cache", True))
        if self.config.routing_level == "token" and use_cache is False:
            raise ValueError(
                "routing_level='token' routes each prompt token by its own embedding and every generated token by "
                "the prompt's route; without the KV cache each step would re-run the prompt with another routing and "
                "give other tokens than the cached run. Generate with use_cache=True (the default)."
            )
        return super().generate(*args, **kwargs)

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, cache, position_ids=None,
                                  is_first_iteration=False, **kwargs):
        """generate() with a compileable (static) cache builds 4-D masks ahead of the forward (static shapes for a
        compiled decoding step). The prompt's pass keeps its 2-D padding mask instead (the router reads the prompt from
        it; the base builds its own masks from it and the static cache); every decoding step gets the base's own masks,
        from the base's config, for the B input rows (the forward doubles them for the domain rows), also when
        generate() dropped an all-ones mask (a decoding step without a mask would read the static cache's length)."""
        if (is_first_iteration or (attention_mask is not None and attention_mask.dim() != 2)
                or cache_length(cache, None)[0] == 0):
            return attention_mask
        return create_masks_for_generate(config=self.base.config, inputs_embeds=inputs_embeds,
                                         attention_mask=attention_mask, cache=cache, position_ids=position_ids, **kwargs)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        """Keep the prompt's route for every new token: the router never re-encodes the prefix."""
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if getattr(outputs, "routes", None) is not None and outputs.token_routes is None:
            model_kwargs["domain_ids"] = outputs.routes
        return model_kwargs

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: a full-ICLM cache holds invariant rows then domain rows; reorder both halves alike."""
        routes = getattr(cache, "iclm_routes", None)
        if routes is not None and routes.numel() == beam_idx.numel():
            cache.iclm_routes = routes[beam_idx.to(routes.device)]
        doubled = torch.cat([beam_idx, beam_idx + beam_idx.numel()])
        layers = getattr(cache, "layers", None)
        if not layers:
            cache.reorder_cache(doubled if IclmModel._cache_rows(cache) == 2 * beam_idx.numel() else beam_idx)
            return cache
        for index, layer in enumerate(layers):  # a shared trunk's layers hold B rows, the adapted ones 2B
            if IclmModel._cache_rows(cache, index) is not None:
                layer.reorder_cache(doubled if IclmModel._cache_rows(cache, index) == 2 * beam_idx.numel() else beam_idx)
        return cache

    # ------------------------------------------------------------------------------------ saving/loading
    def peft_config(self, name: str):
        """A ``peft.LoraConfig`` describing module ``name`` as a standalone adapter on the base."""
        from peft import LoraConfig

        layers = dict(self.base.named_modules())
        conv1d = any(is_conv1d(layers[key_to_path(k)]) for k in self.lora)
        return LoraConfig(
            r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout,
            target_modules=[key_to_path(k) for k in self.lora], fan_in_fan_out=conv1d, task_type="CAUSAL_LM",
            base_model_name_or_path=self.config.base_model_name_or_path,
        )

    def save_module_adapters(self, save_directory) -> list[str]:
        """Write every module as a standard PEFT adapter folder ``<dir>/<module name>/``."""
        for name in self.config.module_names:
            save_peft_adapter(os.path.join(save_directory, name), name, self.lora, self.peft_config(name))
        return list(self.config.module_names)

    def save_pretrained(self, save_directory, *args, state_dict=None, is_main_process: bool = True, **kwargs):
        """Safetensors checkpoint (trained parts only when the base has a source) + one PEFT folder per module, and
        the tokenizer when its source is known (an evaluator or Hub user needs it beside the weights). Written
        into a staging folder first: a save killed midway leaves the previous folder as it was."""
        kwargs.pop("safe_serialization", None)  # always safetensors
        if not is_main_process:
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, is_main_process=False, **kwargs)
        with atomic_directory(save_directory) as staging:
            super().save_pretrained(staging, *args, state_dict=state_dict, is_main_process=True, **kwargs)
            self.save_module_adapters(staging)
            self._save_tokenizer(staging)

    def _save_tokenizer(self, save_directory) -> None:
        if not self.tokenizer_source or any(os.path.exists(os.path.join(save_directory, f)) for f in _TOKENIZER_FILES):
            return
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
        except (OSError, ValueError):
            return  # no tokenizer there (a bare weights folder): nothing known to save
        tokenizer.save_pretrained(save_directory)

    def push_to_hub(self, repo_id: str, *args, local_dir: str | None = None, **kwargs):
        """Upload with the ICLM model card (``hub_iclm.upload_to_hub``) when this project is installed; a Hub copy
        of this file (remote code) falls back to the standard ``PreTrainedModel.push_to_hub``."""
        try:
            from hub_iclm import upload_to_hub
        except ImportError:
            return super().push_to_hub(repo_id, *args, **kwargs)
        import tempfile

        folder = local_dir or tempfile.mkdtemp(prefix="iclm-push-")
        self.save_pretrained(folder)
        names = ("token", "private", "commit_message", "revision", "eval_results", "training_data", "blocking")
        return upload_to_hub(self, folder, repo_id, **{k: kwargs[k] for k in names if k in kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load an ICLM checkpoint; a trained-parts checkpoint reloads its base from ``base_model_name_or_path``
        (pass ``base_model_name_or_path=...`` to take the base from elsewhere). Without ``dtype`` the base comes
        back in the dtype it was saved in; ICLM's own parts are float32."""
        if pretrained_model_name_or_path is None:  # weights given in memory (config= and state_dict=)
            return super().from_pretrained(None, *model_args, config=config, **kwargs)
        base_source = kwargs.pop("base_model_name_or_path", None)
        ignore_base_mismatch = kwargs.pop("ignore_base_mismatch", False)
        kwargs.pop("use_safetensors", None)
        pretrained_model_name_or_path = resolve_model_source(
            pretrained_model_name_or_path, option="from_pretrained", cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"), subfolder=kwargs.get("subfolder") or "")
        refuse_pickles(str(pretrained_model_name_or_path))
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        if config is None:
            config = IclmConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if base_source:
            config.base_model_name_or_path = str(base_source)
        if not config.base_model_name_or_path:
            try:
                loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config,
                                             use_safetensors=True, **kwargs)
            except Exception as error:
                if "safetensor" in type(error).__name__.lower() or "header" in str(error).lower():
                    raise ValueError(_unreadable(pretrained_model_name_or_path, error)) from error
                raise
            model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives (model, info)
            model.tokenizer_source = str(pretrained_model_name_or_path)
            return loaded

        base_kwargs = {k: kwargs[k] for k in _BASE_LOAD_KWARGS if k in kwargs}
        if "dtype" not in base_kwargs and "torch_dtype" not in base_kwargs and getattr(config, "dtype", None):
            base_kwargs["dtype"] = config.dtype  # the dtype it was saved in
        try:
            base = AutoModelForCausalLM.from_pretrained(
                resolve_model_source(config.base_model_name_or_path, option="the checkpoint's base",
                                     cache_dir=base_kwargs.get("cache_dir")), **base_kwargs)
        except OSError as error:
            raise OSError(
                f"This ICLM checkpoint stores only its trained parts; its base {config.base_model_name_or_path!r} "
                f"could not be loaded ({error}). Pass base_model_name_or_path=<local path or Hub id of the base>."
            ) from error
        saved_fingerprint = config.base_fingerprint
        differences = fingerprint_differences(saved_fingerprint or {}, base_fingerprint(base))
        if differences and not ignore_base_mismatch:
            raise ValueError(
                f"The ICLM checkpoint {pretrained_model_name_or_path!r} was trained on another base than the one loaded "
                f"from {config.base_model_name_or_path!r}: {'; '.join(differences)}. Its adapters and router would "
                "mean nothing there. Load the base it was trained on (base_model_name_or_path=...), or pass "
                "ignore_base_mismatch=True if you know what you are doing."
            )
        model = cls(config, base_model=base)
        model.config.base_fingerprint = saved_fingerprint
        weights = cached_file(pretrained_model_name_or_path, "model.safetensors", **hub_kwargs)
        from safetensors.torch import load_file

        try:
            stored = load_file(weights)
        except Exception as error:  # truncated, corrupt, or not a safetensors file at all
            raise ValueError(_unreadable(weights, error)) from error
        embedding_keys = set(model._embedding_keys())
        resized = {k: v for k, v in stored.items() if k in embedding_keys}
        if resized and next(iter(resized.values())).shape[0] != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(next(iter(resized.values())).shape[0], mean_resizing=False)
        expected = model.state_dict()
        missing = [k for k in expected if k not in stored and not k.startswith("model.base.")]
        unexpected = [k for k in stored if k not in expected and k not in embedding_keys]
        mismatched = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in stored.items()
                      if k in expected and v.shape != expected[k].shape]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"Incompatible ICLM checkpoint {pretrained_model_name_or_path!r}: missing {missing[:8]}, unexpected "
                f"{unexpected[:8]}, shape mismatches {mismatched[:8]}. It was saved with another module count, LoRA "
                "targets or aggregation than its config.json says; load it with the config it was trained with."
            )
        model.load_state_dict(stored, strict=False)
        try:  # the saved generation settings (eos ids, defaults), else the base's own
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except OSError:
            model.generation_config = base.generation_config
        model._place_like_base()
        model._check_base()
        folder = str(pretrained_model_name_or_path)
        has_tokenizer = os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, f)) for f in _TOKENIZER_FILES)
        model.tokenizer_source = folder if has_tokenizer else config.base_model_name_or_path
        model.eval()
        return model


IclmConfig.register_for_auto_class()
IclmForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register("iclm", IclmConfig, exist_ok=True)
AutoModelForCausalLM.register(IclmConfig, IclmForCausalLM, exist_ok=True)

__all__ = ["IclmCausalLMOutput", "IclmForCausalLM", "IclmModel", "IclmModelOutput", "IclmPreTrainedModel",
           "mutual_information"]
