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
    assert abs(independent.mean()) < 2 * independent.std() / math.sqrt(20) + 1e-5
    assert independent.max() < identical.min()
    assert independent.mean() < half.mean() < identical.mean()


def test_the_plug_in_estimate_is_mostly_bias_there():
    """What the penalty fixes: the paper's estimator scores independent and identical states alike."""
    independent, identical = (_scores(mutual_information, kind) for kind in ("independent", "identical"))
    assert independent.max() > identical.min()  # the two distributions overlap
    assert independent.mean() > 0.9 * identical.mean()  # and the "MI" of independent states is nearly all of it


# Issue 17, items 1 and 2: dependence the penalty must see, 40 batches of 24 answer positions, C = 576.
BATCHES, ROWS, FEATURES = 40, 24, 576


def _subspace(generator):
    """A shared signal confined to a random 16-dimensional subspace (a fresh one per batch), on independent noise."""
    basis, _ = torch.linalg.qr(torch.randn(FEATURES, 16, generator=generator, dtype=torch.float64))
    shared = torch.randn(ROWS, 16, generator=generator) * 3 @ basis.float().t()
    return torch.randn(ROWS, FEATURES, generator=generator) + shared, torch.randn(ROWS, FEATURES, generator=generator) + shared


def _answer_index(generator, answer_tokens: int = 3):
    """8 equal-length answers of 3 tokens flattened row by row: both states carry a vector of the answer-token index,
    so position i and i + n/2 share it (as in a real batch of equal-length answers)."""
    by_index = torch.randn(answer_tokens, FEATURES, generator=generator) * 0.5
    index = torch.arange(ROWS) % answer_tokens
    return (torch.randn(ROWS, FEATURES, generator=generator) + by_index[index],
            torch.randn(ROWS, FEATURES, generator=generator) + by_index[index])


def _all_ones(generator):
    """A shared scalar along (1, …, 1): softmax ignores a constant added to every feature, so a fixed basis is blind."""
    shared = torch.randn(ROWS, 1, generator=generator) * 3
    return torch.randn(ROWS, FEATURES, generator=generator) + shared, torch.randn(ROWS, FEATURES, generator=generator) + shared


def _independent(generator):
    return torch.randn(ROWS, FEATURES, generator=generator), torch.randn(ROWS, FEATURES, generator=generator)


def _z(states, estimator=penalty, seed=0):
    """Mean over the batches in units of its standard error."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([float(estimator(*states(generator))) for _ in range(BATCHES)])
    return (values.mean() / (values.std() / math.sqrt(BATCHES))).item()


def test_dependence_in_a_random_16_dimensional_subspace_is_detected():
    """The old penalty compared 16 fixed directions: this signal gave it z ≈ 1."""
    assert _z(_subspace) >= 5


def test_dependence_carried_by_the_answer_token_index_is_not_subtracted_away():
    """The old wrong pairing was a shift by n/2, which pairs positions sharing the answer-token index: z ≈ 0."""
    assert _z(_answer_index) >= 3


def test_no_direction_is_unseen():
    """Fresh rotations: the all-ones direction (invisible to a softmax over a fixed basis) is seen, and the gradient
    of dependent states is not confined to a small fixed span (the old one lay in 16 fixed directions, 1e-9 outside)."""
    assert _z(_all_ones) >= 5
    x, y = _states("half", 0)
    x.requires_grad_()
    penalty(x, y).backward()
    old_span, _ = torch.linalg.qr(torch.randn(FEATURES, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    inside = (x.grad.double() @ old_span).norm() ** 2 / x.grad.double().norm() ** 2
    assert inside < 0.1  # ≈ 16/576 of the gradient's energy, as for any 16 directions
    without = x - x @ old_span.float() @ old_span.float().t()  # identical states with those 16 directions removed
    assert float(penalty(without.detach(), without.detach())) > 10 * abs(float(penalty(*_states("independent", 0))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_states_score_zero_on_average(seed):
    assert abs(_z(_independent, seed=seed)) < 3.5


def test_the_penalty_is_reproducible_for_the_same_states_and_fresh_for_new_ones():
    """Randomness hashed from the states: a recomputed loss matches, another batch gets other draws."""
    from mutual_information_iclm import _Draws

    x, y = _states("half", 0)
    assert float(penalty(x, y)) == float(penalty(x.clone(), y.clone()))
    other_x, other_y = _states("half", 1)
    draws, other = _Draws(x, y, None), _Draws(other_x, other_y, None)
    assert not torch.equal(draws.permutation(ROWS), other.permutation(ROWS))
    rows = _Draws(x, y, None).permutation(ROWS)
    assert not (rows == rows.roll(-1)).any()  # a derangement: nobody meets their own partner
    generator = torch.Generator().manual_seed(0)
    assert float(penalty(x, y, generator=generator)) != float(penalty(x, y, generator=generator))  # drawn afresh


def test_descending_the_penalty_removes_the_dependence():
    """On a fixed batch the old penalty could be driven below zero by making the shifted wrong pairs dependent, with the
    true pairs still dependent; with fresh pairings its minimum is reached by making the true pairs independent."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(ROWS, 64, generator=generator) * 2
    x = start.clone().requires_grad_()
    y = (start + torch.randn(ROWS, 64, generator=generator)).requires_grad_()
    optimizer = torch.optim.Adam([x, y], lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        penalty(x, y).backward()
        optimizer.step()
    assert _cka(x.detach(), y.detach()) < 0.5 < _cka(start, start + torch.randn(ROWS, 64, generator=generator))


def _cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x.t() @ y).norm() ** 2 / ((x.t() @ x).norm() * (y.t() @ y).norm()))


def test_penalty_options_and_small_batches():
    x, y = _states("identical", 0, n=8, features=32)
    assert float(penalty(x, y, dim=None, debiased=False)) == float(mutual_information(x, y))  # the paper's estimator
    assert float(penalty(x[:1], y[:1])) == pytest.approx(0.0, abs=1e-7)  # one position: nothing to depend on
    assert float(penalty(torch.zeros(0, 32), torch.zeros(0, 32))) == 0.0
    projected = penalty(x, y, dim=8)
    assert torch.isfinite(projected) and projected > 0
    with pytest.raises(ValueError, match=r"two \[n, C\] tensors"):
        penalty(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="dim must be None"):
        penalty(x, y, dim=0)
    with pytest.raises(ValueError, match="pairings must be an int >= 1"):
        penalty(x, y, pairings=0)


def test_the_model_uses_the_penalty_with_its_own_defaults():
    """The config's defaults are the penalty's: IclmConfig() trains with penalty(x, y)."""
    import inspect

    from configuration_iclm import IclmConfig

    defaults = inspect.signature(penalty).parameters
    config = IclmConfig()
    assert (config.mi_dim, config.mi_debiased) == (defaults["dim"].default, defaults["debiased"].default)


def test_the_basis_is_orthonormal():
    from mutual_information_iclm import dct_basis

    for features in (2, 7, 576):
        basis = dct_basis(features, "cpu").double()
        torch.testing.assert_close(basis.t() @ basis, torch.eye(features, dtype=torch.float64), atol=1e-5, rtol=0)


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


def test_token_seed_depends_on_the_rows_not_on_their_layout():
    """The model seeds the MI draws from its attended token ids: padded and packed layouts of the same rows draw alike
    (so their losses match), other rows draw afresh."""
    from mutual_information_iclm import token_seed

    padded = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    packed = torch.tensor([[5, 6, 7, 8, 9]])
    assert int(token_seed(padded, mask)) == int(token_seed(packed))
    assert int(token_seed(torch.tensor([[5, 6, 7, 9, 8]]))) != int(token_seed(packed))
    x, y = torch.randn(12, 8), torch.randn(12, 8)
    assert torch.equal(penalty(x, y, seed=token_seed(padded, mask)), penalty(x, y, seed=token_seed(packed)))
    assert not torch.equal(penalty(x, y, seed=token_seed(padded, mask)), penalty(x, y, seed=torch.tensor(3)))
