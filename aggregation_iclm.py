"""Aggregation of the invariant and the routed domain module into next-token logits.

* ``hidden_states`` (paper): the concatenation [h_inv ; h_dom] is mixed by a trainable linear map
  (2H → H) and read out by the base's frozen LM head. The paper's new random (2H → V) head is here
  factorised through the LM head: it starts as [½I, ½I], so the untrained model reproduces the base's
  next-token distribution exactly, and it costs 2H² parameters instead of 2H·V. The paper's
  BatchNorm is left out: its batch statistics make one row's logits depend on the other rows (and on
  padding), and differ between training and generation.
* ``logits``: w·logits_inv + (1 − w)·logits_dom.
* ``probas``: log(w·p_inv + (1 − w)·p_dom), returned as logits (log-probabilities).

``mix`` gives the one hidden state the LM head reads (the backbone's ``last_hidden_state``): exact for
``hidden_states``, and for ``logits`` whenever the head is affine; ``probas`` has no such state, and its
``mix`` is the same weighted sum of states, an approximation kept only so the backbone has an output.
"""

import math

import torch
from torch import nn


class Aggregation(nn.Module):
    def __init__(self, hidden_size: int, strategy: str, invariant_weight: float):
        super().__init__()
        self.strategy = strategy
        self.invariant_weight = invariant_weight
        if strategy == "hidden_states":
            self.weight = nn.Parameter(torch.empty(hidden_size, 2 * hidden_size))
            self.bias = nn.Parameter(torch.empty(hidden_size))
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.strategy == "hidden_states":
            eye = torch.eye(self.bias.shape[0], dtype=self.weight.dtype, device=self.weight.device)
            self.weight.copy_(torch.cat([eye, eye], dim=1) / 2)
            self.bias.zero_()

    def mix(self, h_inv: torch.Tensor, h_dom: torch.Tensor) -> torch.Tensor:
        """The aggregated hidden state, in the modules' dtype."""
        if self.strategy == "hidden_states":
            mixed = torch.cat([h_inv, h_dom], dim=-1).to(self.weight.dtype) @ self.weight.t() + self.bias
            return mixed.to(h_inv.dtype)
        w = self.invariant_weight
        return w * h_inv + (1 - w) * h_dom

    def logits(self, h_inv: torch.Tensor, h_dom: torch.Tensor, head, mixed: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits; ``head`` maps hidden states to the base's logits (LM head and its output transform)."""
        if self.strategy == "hidden_states":
            return head(self.mix(h_inv, h_dom) if mixed is None else mixed)
        w = self.invariant_weight
        logits_inv, logits_dom = head(h_inv).float(), head(h_dom).float()
        if self.strategy == "logits":
            return w * logits_inv + (1 - w) * logits_dom
        log_w = math.log(w) if w > 0 else -math.inf
        log_1mw = math.log(1 - w) if w < 1 else -math.inf
        return torch.logaddexp(log_w + logits_inv.log_softmax(-1), log_1mw + logits_dom.log_softmax(-1))
