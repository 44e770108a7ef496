"""Batch estimates of the mutual information between the invariant and the routed domain module's states.

Plug-in estimator (the paper's): each hidden vector is turned into a distribution over its C features by a
softmax: p_n (invariant), q_n (domain). With n positions, P_X = mean p_n, P_Y = mean q_n and the joint
P_XY = PᵀQ / n, a C×C matmul (the paper's code materialised n×C×C). MI = KL(P_XY ‖ P_X ⊗ P_Y), in nats, in
float32 whatever the autocast, and finite for any input: P_XY[i, j] ≤ min(P_X[i], P_Y[j]), so wherever the
product vanishes the joint does too, and the 0·log 0 terms are taken as 0 without NaN gradients.

At the batch sizes ICLM trains with (16–24 answer positions) and C = the hidden size, that estimate is
almost all finite-sample bias: independent and identical states score alike. ``penalty`` measures
dependence instead: states are first projected onto ``dim`` fixed orthonormal directions (fewer features,
less bias), and the estimate for states paired wrongly (y shifted by n // 2 rows, so each x meets another
position's y: same marginals, same n, no dependence) is subtracted. Its expectation is ≈ 0 for independent
states and clearly positive for dependent ones; a single batch's value can be slightly negative.
"""

import torch

_PROJECTIONS: dict = {}


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


def feature_projection(features: int, dim: int, device) -> torch.Tensor:
    """A fixed [features, dim] matrix with orthonormal columns (seeded: the same in every process and run)."""
    key = (features, dim, str(device))
    if key not in _PROJECTIONS:
        generator = torch.Generator().manual_seed(0)
        basis, _ = torch.linalg.qr(torch.randn(features, dim, generator=generator, dtype=torch.float64))
        _PROJECTIONS[key] = basis.float().to(device)
    return _PROJECTIONS[key]


def penalty(x: torch.Tensor, y: torch.Tensor, dim: int | None = 16, debiased: bool = True) -> torch.Tensor:
    """The MI loss: plug-in MI of the states projected to ``dim`` features (None: all), minus the estimate for
    wrongly paired states when ``debiased``. ``dim=None, debiased=False`` is the paper's estimator."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"penalty expects two [n, C] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        if dim is not None and dim < x.shape[1]:
            projection = feature_projection(x.shape[1], dim, x.device)
            x, y = x @ projection, y @ projection
        value = mutual_information(x, y)
        if debiased and x.shape[0] > 1:
            value = value - mutual_information(x, y.roll(x.shape[0] // 2, dims=0))
        return value
