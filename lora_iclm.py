"""The ICLM modules: LoRA adapters on ONE shared frozen base, routed per row (or per token) in training.

Every module (the domain-invariant one and the N domain-specific ones) is a LoRA adapter on the same
target layers of the frozen base. A forward hook on each target layer adds, to each row, the delta of
the adapter that row is routed to. Rows are grouped by module once per forward, so each adapter runs
only on its own rows: an unrouted module does no work and gets no gradient (PEFT's ``adapter_names=``
does the same but only in eval mode). The base's own modules and state-dict keys stay untouched, so
base weights load as they are, and each adapter exports as a standard PEFT adapter folder.
"""

import math
import os
import re

import torch
from torch import nn

_CONV1D_TYPES = ("Conv1D",)  # GPT-2 style layers: weight is [in, out]
# Attention projections per architecture family, when the base has no q/k/v/o_proj.
_ATTENTION_TARGETS = {
    "gpt2": ["c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "falcon": ["query_key_value", "self_attention.dense"],
    "bloom": ["query_key_value", "self_attention.dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "mpt": ["Wqkv", "out_proj"],
    "gpt_bigcode": ["c_attn", "attn.c_proj"],
}


class RoutingState:
    """Which module each row (or token) uses in the current forward; shared by all routed layers.

    ``set(module_ids)`` takes -1 (no adapter) or a module index, per row ([rows]) or per token
    ([rows, T]), and is computed once per forward, not once per layer: ``names`` are the modules in
    use; per row, ``row_slots`` gives each row's index into ``names`` (``len(names)``: no adapter);
    per token, ``token_groups`` gives each module's flat token indices.

    Under ``torch.compile`` none of that is read from the routes (it is data-dependent Python: a graph break, and a
    recompilation for every set of modules a batch happens to use): ``module_ids`` is kept as a tensor, ``names``
    lists every module, and each adapted layer picks each row's (token's) adapter by a one-hot product over all of
    them (``RoutedLora._one_hot``). One graph for any routes; the price is that an adapter no row uses gets a zero
    gradient instead of none.
    """

    def __init__(self, module_names: list[str]):
        self.module_names = module_names
        self.clear()

    def set(self, module_ids: torch.Tensor | None) -> None:
        self.clear()
        if module_ids is None:
            return
        if torch.compiler.is_compiling():
            self.names, self.module_ids = list(self.module_names), module_ids
            return
        used = [m for m in torch.unique(module_ids).tolist() if m >= 0]
        self.names = [self.module_names[m] for m in used]
        if not used:
            return
        if module_ids.dim() == 1:
            slot_of = torch.full((len(self.module_names) + 1,), len(used), dtype=torch.long, device=module_ids.device)
            slot_of[torch.tensor(used, device=module_ids.device)] = torch.arange(len(used), device=module_ids.device)
            self.row_slots = slot_of[module_ids]  # -1 reads the last entry: the "no adapter" slot
            self.unrouted_rows = bool((module_ids < 0).any())
        else:
            flat = module_ids.reshape(-1)
            self.token_groups = [(self.module_names[m], torch.nonzero(flat == m).squeeze(1)) for m in used]

    def clear(self) -> None:
        self.names: list[str] = []
        self.row_slots: torch.Tensor | None = None
        self.unrouted_rows = False
        self.token_groups: list[tuple[str, torch.Tensor]] = []
        self.module_ids: torch.Tensor | None = None  # under torch.compile: each row's (token's) module, -1 none


class LoraPair(nn.Module):
    """One adapter's A (r × in) and B (out × r) on one layer; B starts at zero so the module starts as the base."""

    def __init__(self, in_features: int, out_features: int, r: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_features, r))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.t()) @ self.lora_B.t()


class RoutedLora(nn.Module):
    """All modules' LoRA adapters on one target layer, applied as a forward hook of that layer."""

    def __init__(self, in_features, out_features, module_names, r, alpha, dropout, routing: RoutingState):
        super().__init__()
        self.adapters = nn.ModuleDict({name: LoraPair(in_features, out_features, r) for name in module_names})
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.routing = routing

    def hook(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.routing.names:
            return output
        x = self.dropout(args[0].to(self.adapters[self.routing.names[0]].lora_A.dtype))
        if self.routing.module_ids is not None:
            delta = self._one_hot(x)
        else:
            delta = self._per_row(x) if self.routing.row_slots is not None else self._per_token(x)
        return output + (delta * self.scaling).to(output.dtype)

    def _per_row(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's own adapter in one pair of batched matmuls, whatever the number of modules: the
        adapters in use are stacked and gathered per row (unused ones stay out of the graph)."""
        adapters = [self.adapters[name] for name in self.routing.names]
        if len(adapters) == 1 and not self.routing.unrouted_rows:
            return adapters[0](x)
        lora_a = torch.stack([a.lora_A for a in adapters])
        lora_b = torch.stack([a.lora_B for a in adapters])
        if self.routing.unrouted_rows:  # a zero adapter for rows without one
            lora_a = torch.cat([lora_a, lora_a.new_zeros(1, *lora_a.shape[1:])])
            lora_b = torch.cat([lora_b, lora_b.new_zeros(1, *lora_b.shape[1:])])
        slots = self.routing.row_slots
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(rows, lora_a[slots].transpose(1, 2)), lora_b[slots].transpose(1, 2))
        return delta.reshape(*x.shape[:-1], -1)

    def _one_hot(self, x: torch.Tensor) -> torch.Tensor:
        """The routed deltas under torch.compile: every module's adapter in the graph, picked per row (or token) by a
        one-hot product; no Python decision and no gather or scatter reads the routes (a gather's backward is a
        scatter-add, which Inductor's CPU code generation fails on with more than one thread). Per row, the one-hot
        mix of the stacked weights is exact (one term is the adapter, the rest exact zeros), then the same two bmm as
        eager; per token, every module's A runs on every token and the one-hot mask keeps each token's own."""
        ids = self.routing.module_ids
        adapters = [self.adapters[name] for name in self.routing.names]
        lora_a = torch.stack([a.lora_A for a in adapters])  # [M, r, in]
        lora_b = torch.stack([a.lora_B for a in adapters])  # [M, out, r]
        pick = (ids.unsqueeze(-1) == torch.arange(len(adapters), device=ids.device)).to(lora_a.dtype)  # -1: no row of 1s
        if ids.dim() == 1:
            row_a = (pick[:, :, None, None] * lora_a).sum(1)  # [R, r, in]
            row_b = (pick[:, :, None, None] * lora_b).sum(1)  # [R, out, r]
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            delta = torch.bmm(torch.bmm(rows, row_a.transpose(1, 2)), row_b.transpose(1, 2))
            return delta.reshape(*x.shape[:-1], -1)
        r = lora_a.shape[1]
        low = x @ lora_a.reshape(-1, lora_a.shape[-1]).t()  # [..., M * r]: every module's A
        low = low * pick.unsqueeze(-1).expand(*pick.shape, r).reshape(low.shape)
        return low @ lora_b.permute(1, 0, 2).reshape(lora_b.shape[1], -1).t()

    def _per_token(self, x: torch.Tensor) -> torch.Tensor:
        """Token-level routing: each module runs on its own tokens only."""
        flat = x.reshape(-1, x.shape[-1])
        delta = None
        for name, index in self.routing.token_groups:
            part = self.adapters[name](flat.index_select(0, index))
            delta = (part.new_zeros(flat.shape[0], part.shape[-1]) if delta is None else delta).index_add(0, index, part)
        return delta.reshape(*x.shape[:-1], -1)


def _layer_features(layer: nn.Module) -> tuple[int, int] | None:
    if type(layer).__name__ in _CONV1D_TYPES:
        return layer.weight.shape[0], layer.weight.shape[1]
    if isinstance(layer, nn.Linear) or (hasattr(layer, "in_features") and hasattr(layer, "out_features")):
        return layer.in_features, layer.out_features
    return None


def default_target_modules(base: nn.Module) -> list[str]:
    """The base's attention projections: q/k/v/o_proj where present, else the family's equivalents."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= leaf_names:
        return ["q_proj", "k_proj", "v_proj", "o_proj"]
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type in _ATTENTION_TARGETS:
        return list(_ATTENTION_TARGETS[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise ValueError(
        f"Cannot guess the attention projections of a {model_type!r} base: "
        "set lora_target_modules in the IclmConfig (e.g. ['q_proj', 'v_proj'])."
    )


def _matches(path: str, target_modules: str | list[str]) -> bool:
    """PEFT's rule: a list matches module names (path suffixes); a string is one name, or a regex over full paths."""
    if isinstance(target_modules, str):
        if re.fullmatch(r"[\w\-]+", target_modules):
            target_modules = [target_modules]
        else:
            return re.fullmatch(target_modules, path) is not None
    return any(path == t or path.endswith("." + t) for t in target_modules)


def decoder_layers(base: nn.Module) -> tuple[str, nn.ModuleList]:
    """The base's stack of decoder layers and its path: the ModuleList with one entry per hidden layer."""
    count = base.config.get_text_config().num_hidden_layers
    for path, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return path, module
    raise ValueError(f"Cannot find the {count} decoder layers of this {type(base).__name__}: adapter_layers (a shared "
                     "trunk) needs them; use adapter_layers=None.")


def find_target_layers(base: nn.Module, target_modules: str | list[str],
                       within: tuple[str, ...] | None = None) -> dict[str, tuple[nn.Module, int, int]]:
    """Map each matching layer path (under the ``within`` prefixes, if given) to (layer, in_features, out_features)."""
    output_layer = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    found, not_linear = {}, []
    for path, layer in base.named_modules():
        if layer is output_layer or not path or not _matches(path, target_modules):
            continue
        if within is not None and not path.startswith(within):
            continue
        features = _layer_features(layer)
        if features is not None:
            found[path] = (layer, *features)
        else:
            not_linear.append(f"{path} ({type(layer).__name__})")
    if not found:
        linear = sorted({p.rsplit(".", 1)[-1] for p, m in base.named_modules() if _layer_features(m) and m is not output_layer})
        matched = f" It matches only modules that are not linear layers: {not_linear[:4]}." if not_linear else ""
        raise ValueError(
            f"lora_target_modules={target_modules!r} matches no linear layer of the base.{matched} "
            f"Its linear layers are named: {linear}."
        )
    return found


def path_to_key(path: str) -> str:
    """ModuleDict keys cannot hold dots; layer paths never hold '-'."""
    return path.replace(".", "-")


def key_to_path(key: str) -> str:
    return key.replace("-", ".")


def is_conv1d(layer: nn.Module) -> bool:
    return type(layer).__name__ in _CONV1D_TYPES


def save_peft_adapter(directory, name, routed: nn.ModuleDict, peft_config) -> None:
    """Write adapter ``name`` as a standard PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    peft_config.save_pretrained(directory)
    state = {}
    for key, routed_lora in routed.items():
        pair = routed_lora.adapters[name]
        prefix = f"base_model.model.{key_to_path(key)}"
        state[f"{prefix}.lora_A.weight"] = pair.lora_A.detach().contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = pair.lora_B.detach().contiguous().cpu()
    save_file(state, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
