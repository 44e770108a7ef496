"""The ICLM router: vector quantisation of the frozen base's prompt embeddings.

The base (no adapter) encodes the prompt; its last hidden states are projected, L2-normalised and
mean-pooled over each sequence's prompt tokens only (pads and answer tokens are masked out, so
training and test route alike), then matched to a codebook of N centroids. The nearest centroid
picks the domain module. A "sequence" is a row, or one of the sequences packed into a row
(padding-free batches): each gets its own route. The router learns from its VQ loss alone (the
caller runs the base without gradient): ``β·‖sg[e] − z‖² + ‖e − sg[z]‖²`` (VQ-VAE), β = 0.25 in the
paper. Everything here runs in float32 whatever the autocast: distances between close centroids
decide routes, and bf16 flips them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    routes: torch.Tensor  # [S] module per sequence (S = rows, or packed sequences)
    token_routes: torch.Tensor | None  # [B, T] module per token (token-level routing, or packed rows)
    commitment_loss: torch.Tensor  # scalar VQ loss: mean over the sequences that have a prompt
    sequence_losses: torch.Tensor  # [S] each sequence's VQ loss (0 for one without prompt tokens)
    embeddings: torch.Tensor  # [S, D] pooled router embeddings (for analysis and codebook initialisation)


def segment_sum(values: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Per-sequence sums [S, ...] of per-token ``values`` [B, T, ...] (``segments`` [B, T]: each token's sequence).

    Written without a scatter, so that torch.compile handles it on every backend (Inductor's CPU code generation of a
    scatter-add, which ``index_add`` lowers to, fails with more than one thread): one sequence per row is a plain sum
    over the row; packed rows (sequences numbered in order across the batch) sum through a one-hot [S, B·T] matrix.
    """
    batch, length = segments.shape
    if num_segments == batch:  # one sequence per row: segments[b, t] = b (see modeling_iclm.sequence_segments)
        return values.sum(1)
    one_hot = segments.reshape(1, -1) == torch.arange(num_segments, device=segments.device)[:, None]
    flat = values.reshape(batch * length, -1)
    return (one_hot.to(flat.dtype) @ flat).reshape(num_segments, *values.shape[2:])


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

    def embed(self, hidden_states: torch.Tensor, prompt_mask: torch.Tensor, segments: torch.Tensor,
              num_segments: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token embeddings [B, T, D], pooled embeddings [S, D] (both unit-norm) and prompt tokens per sequence."""
        weight, bias = self.projection.weight.float(), self.projection.bias.float()
        tokens = F.normalize(F.linear(hidden_states.float(), weight, bias), dim=-1)
        mask = prompt_mask.float()
        sums = segment_sum(tokens * mask.unsqueeze(-1), segments, num_segments)
        counts = segment_sum(mask, segments, num_segments)
        return tokens, F.normalize(sums / counts.clamp_min(1.0).unsqueeze(1), dim=-1), counts

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances [..., N] to each centroid (float32)."""
        e = self.codebook.float()
        z = z.float()
        return (z.pow(2).sum(-1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(-1)).clamp_min(0)

    def scaled_temperature(self) -> torch.Tensor:
        """Each centroid's temperature [N] (detached): τ times the squared distance to its nearest other centroid.

        ``softmax(-d / T)`` over the centroids, with T broadcast over them, is a soft assignment in which each centroid
        has its own width, set by its nearest neighbour (as adaptive kernel bandwidths are): a point at a centroid
        gives its nearest neighbour e^(-1/τ) of its weight (e^-5 at τ = 0.2) and every farther centroid less, whatever
        the rest of the codebook looks like. Squared distances between unit vectors lie in [0, 4], so a fixed τ = 1
        made soft weights nearly uniform (soft updates pulled every centroid to the mean, Gumbel routes were random);
        one τ relative to the *mean* spacing still merged close pairs when far clusters existed (two tasks × two
        renderings: the far pairs set the scale, and each close pair shared its points). Centroids that approach
        each other get sharper assignments, so soft routing cannot merge them.
        """
        e = self.codebook.detach().float()
        n = e.shape[0]
        if n < 2:
            return e.new_full((n,), self.temperature)
        spacing = torch.cdist(e, e).pow(2) + torch.diag(e.new_full((n,), float("inf")))
        return self.temperature * spacing.min(1).values.clamp_min(1e-6)

    def _assign(self, z: torch.Tensor, forced: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Routes and per-vector VQ loss for embeddings z [..., D]."""
        d = self.distances(z)
        nearest = d.argmin(-1)
        if forced is not None:
            routes = target = forced  # the oracle: the codebook learns the true domains
        elif self.quantization == "gumbel" and self.training:
            # A sampled route picks the module that trains on z; the codebook and the projection still learn from the
            # nearest centroid. (Committing z to a sampled far centroid, and pulling that centroid to z, is noise that
            # the projection turned into drift: close clusters merged.)
            gumbel = -torch.log(-torch.log(torch.rand_like(d).clamp(1e-9, 1 - 1e-9)))
            routes, target = (-d / self.scaled_temperature() + gumbel).argmax(-1), nearest
        else:
            routes = target = nearest
        e = self.codebook.float()
        chosen = e[target]
        commitment = self.beta * ((z - chosen.detach()) ** 2).sum(-1)  # z commits to its (nearest or oracle) centroid
        if self.quantization == "soft" and self.training and forced is None:
            # Soft k-means: every centroid moves toward z in proportion to its assignment probability. (Committing z
            # to every centroid as well would pull the clusters together: the projection learns only from this loss.)
            weights = torch.softmax(-d.detach() / self.scaled_temperature(), dim=-1)
            return routes, commitment + (weights * ((e - z.detach().unsqueeze(-2)) ** 2).sum(-1)).sum(-1)
        return routes, commitment + ((chosen - z.detach()) ** 2).sum(-1)

    def forward(self, hidden_states: torch.Tensor, prompt_mask: torch.Tensor, domain_ids: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, num_segments: int | None = None) -> Routing:
        """Route each sequence (``segments`` [B, T] gives each token's sequence index; default: one per row)."""
        if segments is None:
            num_segments = hidden_states.shape[0]
            segments = torch.arange(num_segments, device=hidden_states.device)[:, None].expand(prompt_mask.shape)
        with torch.autocast(hidden_states.device.type, enabled=False):
            tokens, pooled, counts = self.embed(hidden_states, prompt_mask, segments, num_segments)
            routes, losses = self._assign(pooled, domain_ids)
            token_routes = routes[segments] if num_segments != prompt_mask.shape[0] else None
            if self.routing_level == "token":
                # Each prompt token by its own embedding; the pooled term keeps the sequence route (used for
                # answer and generated tokens) trained on what it reads.
                forced = None if domain_ids is None else domain_ids[segments]
                own, token_loss = self._assign(tokens, forced)
                token_sums = segment_sum(token_loss * prompt_mask.float(), segments, num_segments)
                losses = losses + token_sums / counts.clamp_min(1.0)
                token_routes = torch.where(prompt_mask.bool(), own, routes[segments])
            present = (counts > 0).float()  # a sequence with no prompt token (all padding) adds no VQ loss
            losses = losses * present
        return Routing(routes=routes, token_routes=token_routes, commitment_loss=losses.sum() / present.sum().clamp_min(1.0),
                       sequence_losses=losses, embeddings=pooled)


class RouterStateCache:
    """The frozen base's prompt states, kept per prompt: the router's input never changes during training.

    The router reads the base without adapters, so a prompt's states are the same every epoch; only the
    projection and codebook that read them learn. With this cache the base pass of the router runs once per
    distinct prompt (IclmTrainer's k-means pass fills it) instead of once per step. Keys are the prompt's token
    ids (causal attention: prompt states depend on nothing else; positions come from the mask, so padding does
    not matter). Memory: prompt tokens × hidden size × the states' dtype, per distinct prompt, on the states'
    device. Rows of packed batches and inputs given as embeddings are not cached.
    """

    def __init__(self):
        self.states: dict[bytes, torch.Tensor] = {}

    @staticmethod
    def keys(input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[bytes]:
        ids = input_ids.detach().cpu()
        mask = prompt_mask.detach().cpu().bool()
        return [ids[row][mask[row]].numpy().tobytes() for row in range(ids.shape[0])]

    def lookup(self, keys: list[bytes]) -> list[torch.Tensor] | None:
        """Every row's states, or None unless all rows are cached."""
        found = [self.states.get(key) for key in keys]
        return None if any(f is None for f in found) else found

    def store(self, keys: list[bytes], states: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        for row, key in enumerate(keys):
            self.states.setdefault(key, states[row][prompt_mask[row].bool()].detach().clone())

    @staticmethod
    def stack(found: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded [B, P, H] states and their [B, P] mask."""
        length = max(max(f.shape[0] for f in found), 1)
        states = found[0].new_zeros(len(found), length, found[0].shape[-1])
        mask = torch.zeros(len(found), length, dtype=torch.bool, device=states.device)
        for row, f in enumerate(found):
            states[row, : f.shape[0]] = f
            mask[row, : f.shape[0]] = True
        return states, mask

    def __len__(self) -> int:
        return len(self.states)
