"""The ICLM router: vector quantisation of the frozen base's prompt embeddings.

The base (no adapter) encodes the prompt; its last hidden states are projected, L2-normalised and
mean-pooled over prompt tokens only (pads and answer tokens are masked out, so training and test
route alike), then matched to a codebook of N centroids. The nearest centroid picks the domain
module. The router learns from its VQ loss alone (the caller runs the base without gradient):
``β·‖sg[e] − z‖² + ‖e − sg[z]‖²`` (VQ-VAE), β = 0.25 in the paper.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    routes: torch.Tensor  # [B] module per input
    token_routes: torch.Tensor | None  # [B, T] module per token (token-level routing); non-prompt tokens take the input's route
    commitment_loss: torch.Tensor  # scalar VQ loss
    embeddings: torch.Tensor  # [B, D] pooled router embeddings (for analysis and codebook initialisation)


class VectorQuantizedRouter(nn.Module):
    def __init__(self, hidden_size: int, router_dim: int, num_domains: int, beta: float, quantization: str,
                 temperature: float, routing_level: str):
        super().__init__()
        self.projection = nn.Linear(hidden_size, router_dim)
        self.codebook = nn.Parameter(torch.empty(num_domains, router_dim))
        self.beta = beta
        self.quantization = quantization
        self.temperature = temperature
        self.routing_level = routing_level
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.projection.reset_parameters()
        self.codebook.copy_(F.normalize(torch.randn_like(self.codebook), dim=-1))

    def embed(self, hidden_states: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token embeddings [B, T, D] and masked-mean pooled embeddings [B, D], both unit-norm."""
        tokens = F.normalize(self.projection(hidden_states.to(self.projection.weight.dtype)), dim=-1)
        mask = prompt_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return tokens, F.normalize(pooled, dim=-1)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances [..., N] to each centroid."""
        e = self.codebook.to(z.dtype)
        return (z.pow(2).sum(-1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(-1)).clamp_min(0)

    def _assign(self, z: torch.Tensor, forced: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Routes and per-vector VQ loss for embeddings z [..., D]."""
        d = self.distances(z)
        if forced is not None:
            routes = forced
        elif self.quantization == "gumbel" and self.training:
            gumbel = -torch.log(-torch.log(torch.rand_like(d).clamp(1e-9, 1 - 1e-9)))
            routes = (-d / self.temperature + gumbel).argmax(-1)
        else:
            routes = d.argmin(-1)
        e = self.codebook.to(z.dtype)
        if self.quantization == "soft" and self.training and forced is None:
            # Soft k-means: every centroid moves toward z in proportion to its assignment probability.
            weights = torch.softmax(-d.detach() / self.temperature, dim=-1)
            commit = ((z.unsqueeze(-2) - e.detach()) ** 2).sum(-1)
            codebook = ((e - z.detach().unsqueeze(-2)) ** 2).sum(-1)
            return routes, (weights * (self.beta * commit + codebook)).sum(-1)
        chosen = e[routes]
        loss = self.beta * ((z - chosen.detach()) ** 2).sum(-1) + ((chosen - z.detach()) ** 2).sum(-1)
        return routes, loss

    def forward(self, hidden_states: torch.Tensor, prompt_mask: torch.Tensor,
                domain_ids: torch.Tensor | None = None) -> Routing:
        tokens, pooled = self.embed(hidden_states, prompt_mask)
        routes, loss = self._assign(pooled, domain_ids)
        token_routes = None
        if self.routing_level == "token":
            forced = None if domain_ids is None else domain_ids.unsqueeze(1).expand(prompt_mask.shape)
            token_routes, token_loss = self._assign(tokens, forced)
            mask = prompt_mask.to(token_loss.dtype)
            loss = (token_loss * mask).sum() / mask.sum().clamp_min(1.0)
            token_routes = torch.where(prompt_mask.bool(), token_routes, routes.unsqueeze(1))
        else:
            loss = loss.mean()
        return Routing(routes=routes, token_routes=token_routes, commitment_loss=loss, embeddings=pooled)
