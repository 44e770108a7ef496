"""Batch estimates of the mutual information between the invariant and the routed domain module's states.

``mutual_information`` is the paper's plug-in estimator: each hidden vector is turned into a distribution over its C
features by a softmax: p_n (invariant), q_n (domain). With n positions, P_X = mean p_n, P_Y = mean q_n and the joint
P_XY = PᵀQ / n, a C×C matmul (the paper's code materialised n×C×C). MI = KL(P_XY ‖ P_X ⊗ P_Y), in nats, in float32
whatever the autocast, and finite for any input: P_XY[i, j] ≤ min(P_X[i], P_Y[j]), so wherever the product vanishes
the joint does too, and the 0·log 0 terms are taken as 0 without NaN gradients.

At the batch sizes ICLM trains with (16–24 answer positions) and C = the hidden size, that estimate is almost all
finite-sample bias: independent and identical states score alike. ``penalty`` (the MI loss ICLM trains with) measures
dependence instead, on every direction and at every lag:

1. both states are centred on their batch mean (a constant offset carries no dependence but shapes every softmax);
2. both are turned by one fresh random rotation of all C features: random sign flips and a random permutation of the
   features, then a fixed orthonormal DCT-II basis. Softmax features are not rotation-invariant (adding the same
   constant to every feature changes nothing, so a fixed basis is blind along its all-ones direction); a fresh
   rotation per call leaves no direction unseen in expectation, and an orthonormal one keeps every direction's
   share of the energy (a Gaussian matrix would distort it);
3. the plug-in MI of the rotated states, minus its mean over ``pairings`` wrong pairings of the same batch: fresh
   random derangements (each x meets another position's y, never its own, and no fixed lag: a shift by n/2 paired
   positions that share the answer-token index, and subtracted the dependence that index carries). Wrong pairings
   keep the marginals and n and have no dependence, so they carry the estimate's finite-sample bias alone.

Its expectation is 0 for independent states and positive for dependent ones; a single batch's value can be slightly
negative. The randomness comes from ``generator`` when one is given, otherwise from a hash of the states themselves,
computed on their device with no host sync: a fresh draw for every new batch (and every step, since the states
change), yet the same value for the same states, so evaluation losses are reproducible and a loss recomputed on the
same inputs matches. ``penalty(x, y, dim=None, debiased=False)`` is the paper's estimator, ``mutual_information``.
"""

import math

import torch

_BASES: dict = {}
_MASK32 = 0xFFFFFFFF


def mutual_information(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plug-in MI between paired hidden vectors x, y of shape [n, C]; 0 for n = 0."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"mutual_information expects two [n, C] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] == 0:
        return (x.sum() + y.sum()).float() * 0.0
    with torch.autocast(x.device.type, enabled=False):  # bf16 autocast would run the joint's matmul in bf16
        p = torch.softmax(x.float(), dim=-1)
        q = torch.softmax(y.float(), dim=-1)
        joint = p.t() @ q / x.shape[0]
        product = p.mean(0).unsqueeze(1) * q.mean(0).unsqueeze(0)
        tiny = torch.finfo(joint.dtype).tiny
        return (joint * (joint.clamp_min(tiny).log() - product.clamp_min(tiny).log())).sum()


def dct_basis(features: int, device) -> torch.Tensor:
    """The orthonormal DCT-II basis as a [features, features] matrix with orthonormal columns (closed form: no QR, so
    it costs O(C²) to build even at C = 8192; cached per size and device)."""
    key = (features, str(device))
    if key not in _BASES:
        i = torch.arange(features, dtype=torch.float64)
        basis = torch.cos(math.pi * (i[:, None] + 0.5) * i[None, :] / features) * math.sqrt(2 / features)
        basis[:, 0] /= math.sqrt(2)
        _BASES[key] = basis.float().to(device)
    return _BASES[key]


def _mix(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32 with a murmur constant), elementwise on int64 tensors in [0, 2³²): every
    product stays below 2⁶³, so nothing overflows on any device."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x5BD1E995) & _MASK32
    return h ^ (h >> 16)


class _Draws:
    """Random signs and permutations, from a torch.Generator or from a seed hashed out of the states (on device)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
                 seed: torch.Tensor | None = None):
        self.device, self.generator, self.salt = x.device, generator, 0
        if seed is not None:
            self.seed = _mix(torch.as_tensor(seed, dtype=torch.int64, device=x.device))
        elif generator is None:
            bits = [t.detach().contiguous().view(torch.int32).to(torch.int64).sum() for t in (x, y)]
            self.seed = _mix(_mix(bits[0]) * 31 + _mix(bits[1]))  # 0-dim int64 on the states' device

    def keys(self, count: int) -> torch.Tensor:
        if self.generator is not None:
            return torch.randint(0, 2**31, (count,), generator=self.generator).to(self.device)
        self.salt += 1
        index = torch.arange(count, device=self.device, dtype=torch.int64) + self.salt * 0x10000000
        return _mix(_mix(index) ^ self.seed)

    def permutation(self, count: int) -> torch.Tensor:
        return self.keys(count).argsort()

    def signs(self, count: int) -> torch.Tensor:
        return (self.keys(count) & 1).float() * 2 - 1


def token_seed(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A 0-dim int64 seed hashed from a batch's attended token ids in reading order: fresh for every batch, the same
    for the same rows however they are laid out (padded or packed), unlike a hash of float states, which a rounding
    difference between two layouts changes entirely."""
    tokens = input_ids.reshape(-1).to(torch.int64)
    attended = (torch.ones_like(tokens) if attention_mask is None or attention_mask.dim() != 2
                else attention_mask.reshape(-1).to(torch.int64).clamp(0, 1))
    index = attended.cumsum(0) - 1  # each attended token's place in reading order (no data-dependent shape)
    return (attended * _mix(_mix(tokens & _MASK32) ^ _mix(index))).sum() & _MASK32


def penalty(x: torch.Tensor, y: torch.Tensor, dim: int | None = None, debiased: bool = True, pairings: int = 2,
            generator: torch.Generator | None = None, seed: torch.Tensor | None = None) -> torch.Tensor:
    """The MI loss between paired states x, y [n, C] (see the module docstring): centred, turned by a fresh random
    rotation, plug-in MI minus its mean over ``pairings`` fresh wrong pairings. ``dim``: keep this many of the
    rotated features (a fresh random ``dim``-dimensional subspace per call: cheaper, n·C·dim instead of n·C², and
    less sensitive; None: all C). ``debiased=False``: plug-in MI with no centring or pairings subtracted; with
    ``dim=None`` that is the paper's estimator, ``mutual_information(x, y)``. The draws come from ``generator``, else
    from ``seed`` (the model passes :func:`token_seed` of its inputs), else from a hash of the states."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"penalty expects two [n, C] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"penalty: dim must be None (all features) or an int >= 1, got {dim!r}.")
    if isinstance(pairings, bool) or not isinstance(pairings, int) or pairings < 1:
        raise ValueError(f"penalty: pairings must be an int >= 1 (wrong pairings averaged), got {pairings!r}.")
    n, features = x.shape
    if not debiased and dim is None:
        return mutual_information(x, y)
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        draws = _Draws(x, y, generator, seed)
        if debiased:
            x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
        basis = dct_basis(features, x.device)
        if dim is not None and dim < features:
            basis = basis[:, :dim]
        signs, order = draws.signs(features), draws.permutation(features)
        x, y = (x * signs)[:, order] @ basis, (y * signs)[:, order] @ basis
        value = mutual_information(x, y)
        if debiased and n > 1:
            wrong = []
            for _ in range(pairings):
                rows = draws.permutation(n)  # x[rows[i]] meets y[rows[i + 1]]: a random derangement
                wrong.append(mutual_information(x[rows], y[rows.roll(-1)]))
            value = value - torch.stack(wrong).mean()
        return value
