"""Independent Causal Language Models (Gendron et al., EMNLP 2024) on one shared frozen base.

Figure 1 of the paper, as this file runs it::

    prompt ──► frozen base (no adapter) ──► router (VQ codebook) ──► route k
                                                                     │
    tokens ──► frozen base + invariant LoRA ───────► h_inv ──┐       │
          └──► frozen base + domain_k LoRA  ───────► h_dom ──┴─► aggregation ──► logits
                                                   (MI loss between h_inv and h_dom)

Both active modules run in ONE base forward over 2B rows (invariant rows, then routed-domain rows),
each row adding its own adapter's LoRA delta; one KV cache holds both halves during generation.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, cached_file

try:  # Hub remote code: these files sit flat beside this one
    from .aggregation_iclm import Aggregation
    from .configuration_iclm import IclmConfig
    from .lora_iclm import (
        LoraPair,
        RoutedLora,
        RoutingState,
        default_target_modules,
        find_target_layers,
        is_conv1d,
        key_to_path,
        path_to_key,
        save_peft_adapter,
    )
    from .mutual_information_iclm import mutual_information
    from .router_iclm import VectorQuantizedRouter
except ImportError:  # installed as top-level modules (pip install iclm)
    from aggregation_iclm import Aggregation
    from configuration_iclm import IclmConfig
    from lora_iclm import (
        LoraPair,
        RoutedLora,
        RoutingState,
        default_target_modules,
        find_target_layers,
        is_conv1d,
        key_to_path,
        path_to_key,
        save_peft_adapter,
    )
    from mutual_information_iclm import mutual_information
    from router_iclm import VectorQuantizedRouter

_BASE_LOAD_KWARGS = (
    "dtype", "torch_dtype", "device_map", "max_memory", "attn_implementation", "quantization_config",
    "trust_remote_code", "cache_dir", "token", "local_files_only", "proxies", "force_download",
)
_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "proxies", "force_download", "revision", "subfolder")


@dataclass
class IclmCausalLMOutput(ModelOutput):
    """Output of [`IclmForCausalLM`].

    loss: CE of the aggregated prediction (or of the single module run); commitment_loss: the router's VQ
    loss; mi_loss: MI between invariant and routed-domain states at answer-predicting positions;
    invariant_loss / domain_loss: each module's own CE through the base LM head; routes: [B] domain
    chosen per row; token_routes: [B, T] domain per token (token-level routing only);
    router_embeddings: [B, router_dim] pooled prompt embeddings;
    invariant_states / domain_states: last hidden states [B, T, H] (with ``output_hidden_states``).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    commitment_loss: torch.FloatTensor | None = None
    mi_loss: torch.FloatTensor | None = None
    invariant_loss: torch.FloatTensor | None = None
    domain_loss: torch.FloatTensor | None = None
    routes: torch.LongTensor | None = None
    token_routes: torch.LongTensor | None = None
    router_embeddings: torch.FloatTensor | None = None
    invariant_states: torch.FloatTensor | None = None
    domain_states: torch.FloatTensor | None = None


class IclmPreTrainedModel(PreTrainedModel):
    config_class = IclmConfig
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        # Only ICLM's own parts: the base's modules are initialised (or loaded) by the base itself.
        if isinstance(module, (LoraPair, VectorQuantizedRouter, Aggregation)):
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            module.reset_parameters()


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token CE, 0 (not NaN) when no position is labelled."""
    return F.cross_entropy(logits.float(), targets, reduction="sum") / max(targets.numel(), 1)


class IclmForCausalLM(IclmPreTrainedModel, GenerationMixin):
    """A frozen causal LM + one invariant and N routed domain LoRA modules, aggregated into logits.

    ``forward(module=...)`` picks what runs: ``None`` the full ICLM, ``"invariant"`` the invariant
    module alone, ``"domain"`` the routed domain module alone, ``k`` (int) domain module k alone,
    ``"base"`` the base without adapters. ``domain_ids`` overrides the router (the oracle router).
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
        self.lora = nn.ModuleDict()
        for path, (layer, in_features, out_features) in find_target_layers(self.base, config.lora_target_modules).items():
            routed = RoutedLora(in_features, out_features, config.module_names, config.lora_r, config.lora_alpha,
                                config.lora_dropout, self.routing)
            self.lora[path_to_key(path)] = routed
            layer.register_forward_hook(routed.hook)
        self.router = VectorQuantizedRouter(hidden_size, config.router_dim, config.num_domains, config.router_beta,
                                            config.router_quantization, config.router_temperature, config.routing_level)
        self.aggregation = (
            Aggregation(hidden_size, config.aggregation, config.invariant_weight) if config.use_invariant_module else None
        )
        self.post_init()
        if config.base_model_name_or_path:
            # The base reloads from its own source: checkpoints (and Trainer checkpoints) keep only trained parts.
            self._keys_to_ignore_on_save = {f"base.{k}" for k in self.base.state_dict()}

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_base(cls, base, num_domains: int = 2, **config_overrides) -> "IclmForCausalLM":
        """Wrap a causal LM (a ``PreTrainedModel``, or an id/path to load) as an ICLM with ``num_domains`` modules.

        A base given by id/path (or loaded from one) is stored by reference: checkpoints keep only the
        trained parts. Pass ``base_model_name_or_path=None`` to store the base in full.
        """
        if isinstance(base, (str, os.PathLike)):
            base = AutoModelForCausalLM.from_pretrained(str(base))
        if not isinstance(base, PreTrainedModel) or base.get_output_embeddings() is None:
            raise ValueError(
                f"from_base needs a causal LM with an LM head (e.g. AutoModelForCausalLM), got {type(base).__name__}."
            )
        config_overrides.setdefault("base_model_name_or_path", base.name_or_path or None)
        config = IclmConfig(text_config=base.config, num_domains=num_domains, **config_overrides)
        model = cls(config, base_model=base)
        model._place_like_base()
        if base.generation_config is not None:
            model.generation_config = base.generation_config
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

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    # ------------------------------------------------------------------------------------------ forward
    def _parse_module(self, module) -> tuple[str, int | None]:
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

    def _check_domain_ids(self, domain_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
        domain_ids = torch.as_tensor(domain_ids, device=self.router.codebook.device).long().reshape(-1)
        n = self.config.num_domains
        if domain_ids.numel() != batch_size or (domain_ids < 0).any() or (domain_ids >= n).any():
            raise ValueError(
                f"domain_ids must hold one domain index in [0, {n - 1}] per row ({batch_size} rows), "
                f"got {domain_ids.tolist()}."
            )
        return domain_ids

    @staticmethod
    def _check_inputs(input_ids, inputs_embeds, attention_mask, labels, past: int = 0) -> torch.Tensor:
        """The [B, T] reference tensor of the inputs, after checking that mask and labels fit it."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids ([batch, length]) or inputs_embeds ([batch, length, hidden]).")
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        batch_size, length = reference.shape
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"IclmForCausalLM takes a 2-D [batch, past + length] padding mask, got shape {tuple(attention_mask.shape)}. "
                "Static/compiled caches (cache_implementation='static') pass 4-D masks and are not supported: use the "
                "default dynamic cache."
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, past + length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch_size}, {past + length}) "
                f"= (batch, cached {past} + new {length} tokens)."
            )
        if labels is not None and tuple(labels.shape) != (batch_size, length):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected the inputs' ({batch_size}, {length}).")
        return reference

    @staticmethod
    def _prompt_mask(attention_mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Positions the router may read: attended tokens before the first labelled (answer) token."""
        mask = attention_mask.bool()
        if labels is None:
            return mask
        labelled = labels != -100
        length = labels.shape[1]
        first = torch.where(labelled.any(1), labelled.int().argmax(1), torch.full_like(labels[:, 0], length))
        return mask & (torch.arange(length, device=labels.device)[None, :] < first[:, None])

    def _decode(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache):
        return self.base.base_model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, use_cache=use_cache, return_dict=True,
        )

    @torch.no_grad()
    def _router_states(self, input_ids, inputs_embeds, attention_mask, position_ids) -> torch.Tensor:
        """The frozen base's last hidden states without adapters (and without dropout): the router's input."""
        self.routing.clear()
        was_training = self.base.training
        self.base.eval()
        try:
            return self._decode(input_ids, inputs_embeds, attention_mask, position_ids, None, False).last_hidden_state
        finally:
            self.base.train(was_training)

    def route(self, input_ids=None, attention_mask=None, labels=None, domain_ids=None, inputs_embeds=None,
              position_ids=None):
        """Run the router alone: a [`Routing`] with routes, per-token routes, VQ loss and pooled embeddings."""
        reference = self._check_inputs(input_ids, inputs_embeds, attention_mask, labels)
        if attention_mask is None:
            attention_mask = torch.ones_like(reference, dtype=torch.long)
        if domain_ids is not None:
            domain_ids = self._check_domain_ids(domain_ids, reference.shape[0])
        prompt_mask = self._prompt_mask(attention_mask, labels)
        empty = (~prompt_mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Row(s) {empty} leave the router no prompt token to read: labels must be -100 on the prompt "
                "(answer-only labels, as iclm.tasks.AnswerOnlyCollator builds them), not a copy of input_ids."
            )
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        states = self._router_states(input_ids, inputs_embeds, attention_mask, position_ids)
        return self.router(states, prompt_mask, domain_ids)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        domain_ids: torch.LongTensor | None = None,
        module: str | int | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
    ) -> IclmCausalLMOutput:
        kind, fixed = self._parse_module(module)
        past = cache.get_seq_length() if cache is not None else 0
        reference = self._check_inputs(input_ids, inputs_embeds, attention_mask, labels, past)
        batch_size, length = reference.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, past + length, dtype=torch.long, device=reference.device)
        if position_ids is None:  # from the mask, so left padding does not shift positions
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -length:]
        if use_cache is None:
            use_cache = cache is not None
        if domain_ids is not None:
            domain_ids = self._check_domain_ids(domain_ids, batch_size)
            if kind == "fixed" and bool((domain_ids != fixed).any()):
                raise ValueError(f"module={fixed} runs domain module {fixed} on every row; domain_ids "
                                 f"{domain_ids.tolist()} contradict it. Pass one or the other.")

        # 1. Router: only where a routed domain module runs, and only once per prompt.
        routing, routes, token_routes = None, domain_ids, None
        if kind in ("full", "domain") and (domain_ids is None or labels is not None):
            if past > 0:
                raise ValueError(
                    "The router reads the whole prompt: with a non-empty cache pass domain_ids=<routes of the "
                    "first call> (generate() does this for you)."
                )
            routing = self.route(input_ids, attention_mask[:, -length:], labels, domain_ids, inputs_embeds, position_ids)
            routes, token_routes = routing.routes, routing.token_routes
        if kind == "fixed":
            routes = torch.full((batch_size,), fixed, dtype=torch.long, device=reference.device)

        # 2. Which module each row (or token) of the main pass uses.
        offset = int(self.config.use_invariant_module)
        domain_rows = None if routes is None else (token_routes if token_routes is not None else routes) + offset
        doubled = kind == "full" and self.config.use_invariant_module
        if kind == "base":
            module_ids = None
        elif kind == "invariant":
            module_ids = torch.zeros(batch_size, dtype=torch.long, device=reference.device)
        elif doubled:
            invariant_rows = torch.zeros_like(domain_rows)
            module_ids = torch.cat([invariant_rows, domain_rows])
        else:
            module_ids = domain_rows

        # 3. One base forward over all rows (2B for the full ICLM).
        def twice(t):
            return None if t is None else (torch.cat([t, t]) if doubled else t)

        self.routing.set(module_ids)
        try:
            outputs = self._decode(twice(input_ids), twice(inputs_embeds), twice(attention_mask),
                                   twice(position_ids), cache, use_cache)
        finally:
            # Gradient checkpointing re-runs the layers (and their hooks) in backward: keep the routes for it.
            if not (self.training and self.base.is_activation_checkpointing):
                self.routing.clear()
        hidden = outputs.last_hidden_state
        h_inv, h_dom = hidden.split(batch_size) if doubled else (
            (hidden, None) if kind == "invariant" else (None, hidden))
        lm_head = self.base.get_output_embeddings()

        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep > 0 else (
            logits_to_keep if isinstance(logits_to_keep, torch.Tensor) else slice(None))
        if doubled:
            logits = self.aggregation(h_inv[:, keep], h_dom[:, keep], lm_head)
        else:
            logits = lm_head(hidden[:, keep])

        # 4. Losses at the positions that predict answer tokens.
        loss = mi_loss = invariant_loss = domain_loss = None
        if labels is not None:
            targets = labels[:, 1:].to(hidden.device)
            answer = targets != -100
            targets = targets[answer]

            def at_answers(h):
                return h[:, :-1][answer]

            if doubled:
                a_inv, a_dom = at_answers(h_inv), at_answers(h_dom)
                loss = _cross_entropy(self.aggregation(a_inv, a_dom, lm_head), targets)
                invariant_loss = _cross_entropy(lm_head(a_inv), targets)
                domain_loss = _cross_entropy(lm_head(a_dom), targets)
                mi_loss = mutual_information(a_inv, a_dom)
            else:
                loss = _cross_entropy(lm_head(at_answers(hidden)), targets)
                if kind == "invariant":
                    invariant_loss = loss
                elif kind != "base":
                    domain_loss = loss

        return IclmCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache if use_cache else None,
            commitment_loss=None if routing is None else routing.commitment_loss,
            mi_loss=mi_loss,
            invariant_loss=invariant_loss,
            domain_loss=domain_loss,
            routes=routes,
            token_routes=token_routes,
            router_embeddings=None if routing is None else routing.embeddings,
            invariant_states=h_inv if output_hidden_states else None,
            domain_states=h_dom if output_hidden_states else None,
        )

    # --------------------------------------------------------------------------------------- generation
    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        """Keep the prompt's route for every new token: the router never re-encodes the prefix."""
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if getattr(outputs, "routes", None) is not None:
            model_kwargs["domain_ids"] = outputs.routes
        return model_kwargs

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: a full-ICLM cache holds invariant rows then domain rows; reorder both halves alike."""
        rows = cache.layers[0].keys.shape[0] if cache.layers and cache.layers[0].keys is not None else beam_idx.numel()
        if rows == 2 * beam_idx.numel():
            beam_idx = torch.cat([beam_idx, beam_idx + beam_idx.numel()])
        cache.reorder_cache(beam_idx)
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
        """Safetensors checkpoint (trained parts only when the base has a source) + one PEFT folder per module."""
        kwargs.pop("safe_serialization", None)  # always safetensors
        super().save_pretrained(save_directory, *args, state_dict=state_dict, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            self.save_module_adapters(save_directory)

    def push_to_hub(self, repo_id: str, *args, local_dir: str | None = None, **kwargs):
        """Upload with the ICLM model card (``trainer_iclm.upload_to_hub``) when this project is installed; a
        Hub copy of this file (remote code) falls back to the standard ``PreTrainedModel.push_to_hub``."""
        try:
            from trainer_iclm import upload_to_hub
        except ImportError:
            return super().push_to_hub(repo_id, *args, **kwargs)
        import tempfile

        folder = local_dir or tempfile.mkdtemp(prefix="iclm-push-")
        self.save_pretrained(folder)
        names = ("token", "private", "commit_message", "revision", "eval_results", "training_data")
        return upload_to_hub(self, folder, repo_id, **{k: kwargs[k] for k in names if k in kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load an ICLM checkpoint; a trained-parts checkpoint reloads its base from ``base_model_name_or_path``
        (pass ``base_model_name_or_path=...`` to take the base from elsewhere)."""
        base_source = kwargs.pop("base_model_name_or_path", None)
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        if config is None:
            config = IclmConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if base_source:
            config.base_model_name_or_path = str(base_source)
        if not config.base_model_name_or_path:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

        base_kwargs = {k: kwargs[k] for k in _BASE_LOAD_KWARGS if k in kwargs}
        try:
            base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path, **base_kwargs)
        except OSError as error:
            raise OSError(
                f"This ICLM checkpoint stores only its trained parts; its base {config.base_model_name_or_path!r} "
                f"could not be loaded ({error}). Pass base_model_name_or_path=<local path or Hub id of the base>."
            ) from error
        model = cls(config, base_model=base)
        weights = cached_file(pretrained_model_name_or_path, "model.safetensors", **hub_kwargs)
        from safetensors.torch import load_file

        stored, expected = load_file(weights), model.state_dict()
        missing = [k for k in expected if k not in stored and not k.startswith("base.")]
        unexpected = [k for k in stored if k not in expected]
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
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        model._place_like_base()
        model.eval()
        return model


IclmConfig.register_for_auto_class()
IclmForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register("iclm", IclmConfig, exist_ok=True)
AutoModelForCausalLM.register(IclmConfig, IclmForCausalLM, exist_ok=True)

__all__ = ["IclmCausalLMOutput", "IclmForCausalLM", "IclmPreTrainedModel", "mutual_information"]
