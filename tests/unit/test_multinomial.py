"""Multinomial logistic regression without MPI: the local sums against float64 references and finite
differences, the objective's penalty and mask, standardisation of (d + 1, K) parameters, the class checks,
and the same code on the fake CuPy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from pgd.local.losses import LOSSES, get_loss
from pgd.local.multinomial import LocalMultinomialGradient, MultinomialLoss, labels_as_indices, softmax_rows
from pgd.strategies import DataParallelObjective
from pgd.strategies.standardize import ColumnScaling, StandardizedObjective, penalty_factors

N, D, K = 37, 5, 4


class SumComm:
    """A one-rank communicator."""

    name = "serial"

    def allreduce(self, buf) -> None:
        pass


def problem(dtype=np.float64, n=N, d=D, k=K, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * np.linspace(0.5, 3.0, d) + np.linspace(-2, 2, d)).astype(dtype)
    y = rng.integers(0, k, n).astype(dtype)
    weight = rng.uniform(0.2, 2.0, n).astype(dtype)
    return X, y, weight


def reference(X, y, W, b, weight=None):
    """Float64 textbook ``(Σ s_i loss_i, Σ s_i x_i r_iᵀ, Σ s_i r_i)``."""
    X, W, b = X.astype(np.float64), W.astype(np.float64), b.astype(np.float64)
    s = np.ones(len(y)) if weight is None else weight.astype(np.float64)
    Z = X @ W + b
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    labels = y.astype(int)
    loss = np.log(np.exp(Z).sum(axis=1)) - Z[np.arange(len(y)), labels]
    R = P.copy()
    R[np.arange(len(y)), labels] -= 1
    R *= s[:, None]
    return float(s @ loss), X.T @ R, R.sum(axis=0)


def test_the_registry_and_the_loss():
    assert LOSSES["multinomial"] is MultinomialLoss
    assert get_loss("multinomial").curvature_bound == 0.5
    Z = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    P = softmax_rows(Z, np)
    assert np.allclose(P.sum(axis=1), 1) and np.all(np.isfinite(P)) and P[0, 0] == 1.0
    assert np.allclose(MultinomialLoss().pointwise(np.array([2, 0]), Z, np), [2000.0, np.log(3)])
    with pytest.raises(ValueError, match="integers 0 .. 2"):
        labels_as_indices(np.array([0.0, 3.0]), 3, np)
    with pytest.raises(ValueError, match="integers 0 .. 2"):
        labels_as_indices(np.array([0.5]), 3, np)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("block_bytes", [1, 200, 1 << 20])
@pytest.mark.parametrize("weighted", [False, True])
def test_sums_match_a_float64_reference(dtype, fit_intercept, block_bytes, weighted):
    X, y, weight = problem(dtype)
    weight = weight if weighted else None
    local = LocalMultinomialGradient(X, y, K, fit_intercept=fit_intercept, xp=np, block_bytes=block_bytes,
                                     sample_weight=weight)
    rng = np.random.default_rng(1)
    params = rng.standard_normal((D + 1) * K)
    out = np.empty(local.n_params + 1)
    local.sums_at(params, out)
    W, b = params[: D * K].reshape(D, K), params[D * K:] if fit_intercept else np.zeros(K)
    loss, grad_W, grad_b = reference(X, y, W.astype(dtype), b.astype(dtype), weight)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    scale = np.abs(grad_W).max()
    assert out[-1] == pytest.approx(loss, rel=rtol)
    assert np.allclose(out[: D * K], grad_W.ravel(), rtol=rtol, atol=rtol * scale)
    assert np.allclose(out[D * K: -1], grad_b if fit_intercept else 0.0, rtol=rtol, atol=rtol * scale)


def test_the_gradient_is_the_derivative_of_the_loss():
    X, y, weight = problem()
    local = LocalMultinomialGradient(X, y, K, fit_intercept=True, xp=np, sample_weight=weight)
    params = np.random.default_rng(2).standard_normal((D + 1) * K)
    out, probe = np.empty(local.n_params + 1), np.empty(local.n_params + 1)
    local.sums_at(params, out)
    step = 1e-6
    for index in range(local.n_params):
        shifted = params.copy()
        shifted[index] += step
        local.sums_at(shifted, probe)
        up = probe[-1]
        shifted[index] -= 2 * step
        local.sums_at(shifted, probe)
        assert (up - probe[-1]) / (2 * step) == pytest.approx(out[index], rel=1e-6, abs=1e-7)


def test_rows_slices_and_index_arrays_sum_their_rows_only():
    X, y, weight = problem()
    local = LocalMultinomialGradient(X, y, K, fit_intercept=True, xp=np, block_bytes=100, sample_weight=weight)
    params = np.random.default_rng(3).standard_normal((D + 1) * K)
    rows = np.array([3, 30, 7, 7, 11])
    got, on_slice = np.empty(local.n_params + 1), np.empty(local.n_params + 1)
    local.sums_at(params, got, rows=rows)
    local.sums_at(params, on_slice, rows=slice(5, 20))
    buffer = local._batch_X
    smaller = np.empty(local.n_params + 1)
    local.sums_at(params, smaller, rows=rows[:2])   # a smaller batch reuses the gathered rows' buffers
    assert local._batch_X is buffer
    for picked, result in ((rows, got), (np.arange(5, 20), on_slice), (rows[:2], smaller)):
        loss, grad_W, grad_b = reference(X[picked], y[picked], params[: D * K].reshape(D, K), params[D * K:],
                                         weight[picked])
        assert np.allclose(result, np.concatenate([grad_W.ravel(), grad_b, [loss]]), rtol=1e-12, atol=1e-12)


def test_gram_product_and_raw_predictions():
    X, y, weight = problem()
    local = LocalMultinomialGradient(X, y, K, fit_intercept=True, xp=np, block_bytes=100, sample_weight=weight)
    V = np.random.default_rng(4).standard_normal((D + 1) * K)
    out = np.empty(local.n_params + 1)
    local.sums_at(V, out, gram=True)
    design = np.hstack([X, np.ones((N, 1))])
    image = design.T @ (weight[:, None] * (design @ V.reshape(D + 1, K)))
    assert np.allclose(out[:-1], image.ravel(), rtol=1e-12)
    assert out[-1] == pytest.approx(float(np.sum(weight[:, None] * (design @ V.reshape(D + 1, K)) ** 2)))
    raw = np.empty((N, K))
    local.predict_raw(V, raw)
    assert np.allclose(raw, design @ V.reshape(D + 1, K))


def test_the_objective_penalises_coefficients_not_intercepts():
    X, y, _ = problem()
    local = LocalMultinomialGradient(X, y, K, fit_intercept=True, xp=np)
    objective = DataParallelObjective(local, SumComm(), N, 0.3, np, curvature=0.5)
    assert objective.n_params == (D + 1) * K and objective.zeros().shape == ((D + 1) * K,)
    assert np.array_equal(objective.l1_weights, np.r_[np.ones(D * K), np.zeros(K)])
    params = np.random.default_rng(5).standard_normal((D + 1) * K)
    grad = np.empty_like(params)
    value = objective.value_and_grad(params, grad)
    loss, grad_W, grad_b = reference(X, y, params[: D * K].reshape(D, K), params[D * K:])
    W = params[: D * K]
    assert value == pytest.approx(loss / N + 0.15 * W @ W, rel=1e-12)
    assert np.allclose(grad, np.r_[grad_W.ravel() / N + 0.3 * W, grad_b / N], rtol=1e-12)
    # the power iteration bounds the largest curvature: 0.5 λmax(X̃ᵀX̃/n) + λ
    design = np.hstack([X, np.ones((N, 1))])
    bound = 0.5 * np.linalg.eigvalsh(design.T @ design / N).max() + 0.3
    assert objective.lipschitz(200, seed=0) == pytest.approx(bound, rel=1e-3)


@pytest.mark.parametrize("centred", [True, False])
def test_standardisation_of_parameter_matrices(centred):
    rng = np.random.default_rng(6)
    mean, scale = rng.standard_normal(D), rng.uniform(0.5, 2.0, D)
    scaling = ColumnScaling(mean, scale, np, centred=centred, n_classes=K)
    std = rng.standard_normal((D + 1) * K)
    original, back, adjoint = np.empty_like(std), np.empty_like(std), np.empty_like(std)
    scaling.to_original(std, original)
    V, c = std[: D * K].reshape(D, K), std[D * K:]
    W = V / scale[:, None]
    assert np.allclose(original, np.r_[W.ravel(), c - (mean @ W if centred else 0)])
    scaling.from_original(original, back)
    assert np.allclose(back, std)
    # gradient_to_std is the adjoint of the linear map: <Aᵀg, p> = <g, A p>
    g = rng.standard_normal((D + 1) * K)
    scaling.gradient_to_std(g, adjoint)
    assert adjoint @ std == pytest.approx(g @ original)
    assert np.array_equal(penalty_factors(scaling, "original"), np.repeat(np.r_[1 / scale, 0.0], K))


@pytest.mark.parametrize("penalty_scale", ["original", "standardized"])
def test_the_standardised_objective_is_the_objective_in_other_coordinates(penalty_scale):
    X, y, weight = problem()
    local = LocalMultinomialGradient(X, y, K, fit_intercept=True, xp=np, sample_weight=weight)
    inner = DataParallelObjective(local, SumComm(), N, 0.2, np, curvature=0.5, total_weight=float(weight.sum()))
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scaling = ColumnScaling(mean, scale, np, centred=True, n_classes=K)
    objective = StandardizedObjective(inner, scaling, l2=0.2, penalty_scale=penalty_scale)
    std = np.random.default_rng(7).standard_normal((D + 1) * K)
    grad = np.empty_like(std)
    value = objective.value_and_grad(std, grad)
    probe = np.empty_like(std)
    for index in (0, 7, D * K - 1, D * K, (D + 1) * K - 1):
        shifted = std.copy()
        shifted[index] += 1e-6
        up = objective.value_and_grad(shifted, probe)
        shifted[index] -= 2e-6
        assert (up - objective.value_and_grad(shifted, probe)) / 2e-6 == pytest.approx(grad[index], rel=1e-5,
                                                                                        abs=1e-8)
    if penalty_scale == "original":   # the same objective as the inner one at the original parameters
        original = np.empty_like(std)
        scaling.to_original(std, original)
        assert value == pytest.approx(inner.value_and_grad(original, np.empty_like(std)), rel=1e-12)
    factors = np.repeat(np.r_[1 / scale if penalty_scale == "original" else np.ones(D), 0.0], K)
    assert np.allclose(objective.l1_weights, factors)


def test_the_same_code_runs_on_the_fake_cupy():
    from support.gpu_fakes import FakeCupy

    fake = FakeCupy()
    X, y, weight = problem(np.float32)
    params = np.random.default_rng(8).standard_normal((D + 1) * K)
    sums = []
    for xp in (np, fake):
        device = [np.asarray(a).copy().view(type(xp.asarray(a))) for a in (X, y, weight)]
        local = LocalMultinomialGradient(*device[:2], K, fit_intercept=True, xp=xp, block_bytes=100,
                                         sample_weight=device[2])
        out = xp.zeros(local.n_params + 1)
        local.sums_at(xp.asarray(params), out)
        sums.append(np.asarray(out))
    assert np.array_equal(sums[0], sums[1])


def test_classes_are_counted_checked_and_weighted():
    from mpi4py import MPI

    from pgd.errors import InputError
    from pgd.loader.classes import class_factors, count_classes, parse_multiclass_weight

    comm = MPI.COMM_SELF
    y = np.array([0.0, 2.0, 2.0, 1.0, 2.0])
    assert count_classes(comm, y, 0, 5, "f.h5", None) == 3
    assert count_classes(comm, y, 0, 5, "f.h5", 5) == 5
    for bad, requested, fragment in (([0.0, 1.5], None, "first in row 1"), ([0.0, -1.0, 1.0], None, "row 1"),
                                     ([0.0, 3.0], 3, "0 .. 2 (--classes 3)"), ([0.0, 0.0], None, "at least 2"),
                                     ([0.0, 99.0], None, "only 2 rows")):
        with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            count_classes(comm, np.array(bad), 0, len(bad), "f.h5", requested)
    assert parse_multiclass_weight("balanced", 3) == "balanced" and parse_multiclass_weight(None, 3) is None
    assert np.array_equal(parse_multiclass_weight("1,2,0.5", 3), [1, 2, 0.5])
    for text in ("1,2", "1,-1,1", "0,0,0", "a,b,c"):
        with pytest.raises(InputError, match="3 finite non-negative weights"):
            parse_multiclass_weight(text, 3)
    # balanced: W / (K' W_c) over the classes present (scikit-learn's n / (K n_c)); an absent class gets 0
    assert np.allclose(class_factors(comm, y, None, "balanced", 4), [5 / 3, 5 / 3, 5 / 9, 0.0])
    weights = np.array([2.0, 1.0, 1.0, 1.0, 1.0])
    assert np.allclose(class_factors(comm, y, weights, "balanced", 3), [1.0, 2.0, 2 / 3])


@pytest.mark.parametrize("weighted", [False, True])
def test_csr_rows_give_the_dense_sums(weighted):
    """A rank's CSR rows (SciPy products, blocks sized by their scores) give the dense slab's sums: the loss and
    gradient over all rows, a slice and an index array, the Gram product and the raw scores."""
    rng = np.random.default_rng(7)
    n, d, K = 157, 9, 4
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.3)
    X[::5] = 0.0                                    # empty rows
    y = rng.integers(0, K, n).astype(np.float64)
    s = rng.random(n) if weighted else None
    params = rng.standard_normal((d + 1) * K)
    dense = LocalMultinomialGradient(X, y, K, fit_intercept=True, xp=np, block_bytes=7 * 8 * 13, sample_weight=s)
    sparse = LocalMultinomialGradient(scipy.sparse.csr_matrix(X), y, K, fit_intercept=True, xp=np,
                                      block_bytes=4 * 8 * 11, sample_weight=s)
    assert "SciPy CSR" in sparse.kernel and sparse.block_rows == 11
    for options in ({}, {"rows": slice(10, 90)}, {"rows": np.array([3, 3, 150, 0, 77])}, {"gram": True}):
        expected, got = np.full(len(params) + 1, np.nan), np.full(len(params) + 1, np.nan)
        dense.sums_at(params, expected, **options)
        sparse.sums_at(params, got, **options)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    expected, got = np.empty((n, K)), np.empty((n, K))
    dense.predict_raw(params, expected)
    sparse.predict_raw(params, got)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
