"""The batch MI estimator against a brute-force float64 reference."""

import math

import pytest
import torch

from mutual_information_iclm import mutual_information


def brute_force_mi(x: torch.Tensor, y: torch.Tensor) -> float:
    p, q = torch.softmax(x.double(), -1), torch.softmax(y.double(), -1)
    n, c = p.shape
    joint = torch.zeros(c, c, dtype=torch.float64)
    for i in range(n):  # the n×C×C form, summed one sample at a time
        joint += torch.outer(p[i], q[i]) / n
    px, py = p.mean(0), q.mean(0)
    total = 0.0
    for a in range(c):
        for b in range(c):
            if joint[a, b] > 0:
                total += joint[a, b].item() * math.log(joint[a, b].item() / (px[a] * py[b]).item())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=generator) * 3
    y = x @ torch.randn(5, 5, generator=generator) + 0.5 * torch.randn(7, 5, generator=generator)
    assert mutual_information(x, y).item() == pytest.approx(brute_force_mi(x, y), rel=1e-4, abs=1e-7)


def test_dependent_states_have_more_mi_than_independent_ones():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=generator) * 2
    independent = torch.randn(4000, 8, generator=generator) * 2
    assert abs(mutual_information(x, independent).item()) < 5e-3
    assert mutual_information(x, x).item() > 20 * abs(mutual_information(x, independent).item())


def test_finite_for_extreme_and_empty_inputs():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 50.0]], requires_grad=True)
    y = torch.tensor([[-1e4, 1e4, 0.0], [1e4, 1e4, -1e4]], requires_grad=True)
    mi = mutual_information(x, y)
    mi.backward()
    assert torch.isfinite(mi) and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    empty = mutual_information(torch.zeros(0, 4), torch.zeros(0, 4))
    assert empty.item() == 0.0
    half = mutual_information(torch.randn(3, 6, dtype=torch.bfloat16), torch.randn(3, 6, dtype=torch.bfloat16))
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"two \[n, C\] tensors"):
        mutual_information(torch.zeros(3, 4), torch.zeros(3, 5))
