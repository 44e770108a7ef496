"""The batch MI estimator against a brute-force float64 reference."""

import math

import pytest
import torch

from mutual_information_iclm import mutual_information, penalty


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


# ------------------------------------------------------------------ the penalty at training batch sizes
def _states(kind: str, seed: int, n: int = 24, features: int = 576):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = {"independent": torch.randn(n, features, generator=generator), "identical": x.clone(),
         "half": (x + torch.randn(n, features, generator=generator)) / math.sqrt(2)}[kind]
    return x, y


def _scores(estimator, kind, seeds=20):
    return torch.tensor([float(estimator(*_states(kind, seed))) for seed in range(seeds)])


def test_the_penalty_measures_dependence_at_training_batch_sizes():
    """24 answer positions, H = 576 (SmolLM2's): over 20 seeds, every independent batch scores below every identical
    one, and independent batches score 0 on average."""
    independent, half, identical = (_scores(penalty, kind) for kind in ("independent", "half", "identical"))
    assert abs(independent.mean()) < 2 * independent.std() / math.sqrt(20) + 1e-3
    assert independent.max() < identical.min()
    assert independent.mean() < half.mean() < identical.mean()


def test_the_plug_in_estimate_is_mostly_bias_there():
    """What the penalty fixes: the paper's estimator scores independent and identical states alike."""
    independent, identical = (_scores(mutual_information, kind) for kind in ("independent", "identical"))
    assert independent.max() > identical.min()  # the two distributions overlap
    assert independent.mean() > 0.9 * identical.mean()  # and the "MI" of independent states is nearly all of it


def test_penalty_options_and_small_batches():
    x, y = _states("identical", 0, n=8, features=32)
    assert float(penalty(x, y, dim=None, debiased=False)) == pytest.approx(float(mutual_information(x, y)))
    assert float(penalty(x[:1], y[:1])) == pytest.approx(float(mutual_information(x[:1] @ _basis(32), y[:1] @ _basis(32))))
    assert float(penalty(torch.zeros(0, 32), torch.zeros(0, 32))) == 0.0
    with pytest.raises(ValueError, match=r"two \[n, C\] tensors"):
        penalty(torch.zeros(3, 4), torch.zeros(3, 5))


def _basis(features):
    from mutual_information_iclm import feature_projection

    return feature_projection(features, 16, "cpu")


# ------------------------------------------------------------------------------ properties (hypothesis)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_shapes = st.tuples(st.integers(1, 12), st.integers(2, 10))


@settings(max_examples=40, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
def test_plug_in_mi_is_finite_non_negative_and_ignores_row_order(shape, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator) * scale
    y = torch.randn(*shape, generator=generator) * scale
    mi = mutual_information(x, y)
    assert torch.isfinite(mi) and mi >= -1e-6
    order = torch.randperm(shape[0], generator=generator)
    torch.testing.assert_close(mutual_information(x[order], y[order]), mi, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mutual_information(y, x), mi, atol=1e-5, rtol=1e-4)  # KL of a joint vs its transpose


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 10_000))
def test_penalty_is_finite_with_gradients_for_any_batch(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, 48, generator=generator) * 100).requires_grad_()
    y = torch.randn(n, 48, generator=generator).requires_grad_()
    value = penalty(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_independent_inputs_have_near_zero_plug_in_mi_with_many_rows():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(20000, 6, generator=generator), torch.randn(20000, 6, generator=generator)
    assert float(mutual_information(x, y)) < 2e-3
