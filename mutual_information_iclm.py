"""Batch estimate of the mutual information between the invariant and the routed domain module's states.

Each hidden vector is turned into a distribution over its C features by a softmax: p_n (invariant),
q_n (domain). With n positions, P_X = mean p_n, P_Y = mean q_n and the joint P_XY = PᵀQ / n, a C×C
matmul (the paper's code materialised n×C×C). MI = KL(P_XY ‖ P_X ⊗ P_Y), in nats, in float32, and
finite for any input: P_XY[i, j] ≤ min(P_X[i], P_Y[j]), so wherever the product vanishes the joint
does too, and the 0·log 0 terms are taken as 0 without NaN gradients.
"""

import torch


def mutual_information(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MI between paired hidden vectors x, y of shape [n, C]; 0 for n = 0."""
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
