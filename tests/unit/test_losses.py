"""Pointwise losses and LocalLinearGradient against float64 references and finite differences."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import LOSSES, LogisticLoss, SquaredLoss, get_loss

DTYPES = [np.float32, np.float64]
LOSS_NAMES = sorted(name for name in LOSSES if name != "multinomial")  # pointwise; see test_multinomial.py
# relative tolerance of a float result compared with its float64 reference
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def reference_loss(name, y, z):
    """Float64 textbook formulas (only for moderate |z|)."""
    y, z = np.float64(y), np.float64(z)
    if name == "squared":
        return 0.5 * (z - y) ** 2, z - y
    return np.log1p(np.exp(z)) - y * z, 1.0 / (1.0 + np.exp(-z)) - y


def make_targets(name, rng, n, dtype):
    if name == "logistic":
        return (rng.random(n) < 0.4).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def test_get_loss():
    assert isinstance(get_loss("squared"), SquaredLoss)
    assert isinstance(get_loss("logistic"), LogisticLoss)
    assert get_loss("squared").curvature_bound == 1.0
    assert get_loss("logistic").curvature_bound == 0.25
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge")


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_and_derivative_match_float64_reference(name, dtype):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal(500) * 5).astype(dtype)
    y = make_targets(name, rng, 500, dtype)
    loss = get_loss(name)
    ref_value, ref_derivative = reference_loss(name, y, z)
    value, derivative = loss.pointwise(y, z, np), loss.derivative(y, z, np)
    assert value.dtype == dtype and derivative.dtype == dtype
    np.testing.assert_allclose(value, ref_value, rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_allclose(derivative, ref_derivative, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("name", LOSS_NAMES)
@settings(max_examples=40, deadline=None)
@given(z=st.floats(-30, 30), label=st.sampled_from([0.0, 1.0]))
def test_derivative_matches_central_difference(name, z, label):
    loss = get_loss(name)
    y, h = np.array([label]), 1e-6
    numeric = (loss.pointwise(y, np.array([z + h]), np) - loss.pointwise(y, np.array([z - h]), np)) / (2 * h)
    np.testing.assert_allclose(loss.derivative(y, np.array([z]), np), numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_extreme_scores_are_finite_and_exact(dtype):
    loss = LogisticLoss()
    z = np.array([1e4, -1e4, 1e30, -1e30, 0.0, -0.0, 1e4, -1e4, 1e30, -1e30], dtype=dtype)
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1, 0, 1], dtype=dtype)
    expected_loss = np.array([0, 0, 0, 0, np.log(2), np.log(2), 1e4, 1e4, 1e30, 1e30])
    expected_derivative = np.array([0, 0, 0, 0, -0.5, 0.5, 1, -1, 1, -1], dtype=np.float64)
    with np.errstate(all="raise"):
        value = loss.pointwise(y, z, np)
        derivative = loss.derivative(y, z, np)
        probability = loss.link(z, np)
        buffer, work = z.copy(), np.empty_like(z)
        total = loss.sum_and_derivative(y, buffer, work, np)
    # exp(-|z|) is clipped at the smallest normal number, so a perfect fit costs ~1e-38 (float32)
    np.testing.assert_allclose(value, expected_loss, rtol=RTOL[dtype], atol=10 * np.finfo(dtype).tiny)
    assert np.isfinite(buffer).all() and np.isfinite(total)
    tiny = 10 * np.finfo(dtype).tiny
    np.testing.assert_allclose(derivative, expected_derivative, rtol=0, atol=tiny)
    np.testing.assert_allclose(buffer, expected_derivative, rtol=0, atol=tiny)
    np.testing.assert_allclose(probability, [1, 0, 1, 0, 0.5, 0.5, 1, 0, 1, 0], rtol=0, atol=tiny)
    assert total == pytest.approx(expected_loss.sum(), rel=RTOL[dtype])


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_and_derivative_matches_pointwise(name, dtype):
    rng = np.random.default_rng(2)
    z = (rng.standard_normal(1000) * 8).astype(dtype)
    y = make_targets(name, rng, 1000, dtype)
    loss = get_loss(name)
    buffer, work = z.copy(), np.empty_like(z)
    total = loss.sum_and_derivative(y, buffer, work, np)
    assert isinstance(total, float)
    assert total == pytest.approx(loss.pointwise(y, z, np).astype(np.float64).sum(), rel=10 * RTOL[dtype])
    np.testing.assert_allclose(buffer, loss.derivative(y, z, np), rtol=RTOL[dtype], atol=RTOL[dtype])


def naive_sums(name, X, y, w, b, fit_intercept):
    """float64 loss_gradient reference: [X^T r, sum r or 0, sum loss]."""
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    z = X64 @ w.astype(np.float64) + (b if fit_intercept else 0.0)
    value, derivative = reference_loss(name, y64, z)
    return np.concatenate([X64.T @ derivative, [derivative.sum() if fit_intercept else 0.0, value.sum()]])


def make_problem(name, n, d, dtype, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = make_targets(name, rng, n, dtype)
    w = (rng.standard_normal(d) * 0.3).astype(dtype)
    return X, y, w


def block_bytes_for(rows, d, dtype):
    return None if rows is None else rows * d * np.dtype(dtype).itemsize


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("block_rows", [1, 7, None])
def test_loss_gradient_matches_naive(name, dtype, fit_intercept, block_rows):
    n, d = 53, 6
    X, y, w = make_problem(name, n, d, dtype)
    kwargs = {} if block_rows is None else {"block_bytes": block_bytes_for(block_rows, d, dtype)}
    model = LocalLinearGradient(X, y, get_loss(name), fit_intercept=fit_intercept, xp=np, **kwargs)
    assert model.block_rows == (n if block_rows is None else block_rows)
    assert (model.n_local, model.d, model.dtype) == (n, d, dtype)
    out = np.full(d + 2, 123.0)
    model.loss_gradient(w, 0.7, out)
    expected = naive_sums(name, X, y, w, 0.7, fit_intercept)
    np.testing.assert_allclose(out, expected, rtol=100 * RTOL[dtype], atol=100 * RTOL[dtype])
    if not fit_intercept:
        assert out[d] == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("block_rows", [1, 7, None])
def test_gram_matvec_matches_naive(dtype, fit_intercept, block_rows):
    n, d = 41, 5
    X, y, v = make_problem("squared", n, d, dtype)
    kwargs = {} if block_rows is None else {"block_bytes": block_bytes_for(block_rows, d, dtype)}
    model = LocalLinearGradient(X, y, SquaredLoss(), fit_intercept=fit_intercept, xp=np, **kwargs)
    out = np.full(d + 2, -5.0)
    model.gram_matvec(v, -0.4, out)
    X64 = X.astype(np.float64)
    u = X64 @ v.astype(np.float64) + (-0.4 if fit_intercept else 0.0)
    expected = np.concatenate([X64.T @ u, [u.sum() if fit_intercept else 0.0, u @ u]])
    np.testing.assert_allclose(out, expected, rtol=100 * RTOL[dtype], atol=100 * RTOL[dtype])


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_local_rows(name, dtype):
    d = 4
    X, y = np.empty((0, d), dtype), np.empty(0, dtype)
    model = LocalLinearGradient(X, y, get_loss(name), fit_intercept=True, xp=np)
    out = np.full(d + 2, 9.0)
    model.loss_gradient(np.ones(d, dtype), 1.0, out)
    np.testing.assert_array_equal(out, 0.0)
    out[:] = 9.0
    model.gram_matvec(np.ones(d, dtype), 1.0, out)
    np.testing.assert_array_equal(out, 0.0)
    predictions = np.empty(0, dtype)
    model.predict_raw(np.ones(d, dtype), 1.0, predictions)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_predict_raw(fit_intercept):
    X, y, w = make_problem("logistic", 30, 4, np.float32)
    model = LocalLinearGradient(X, y, LogisticLoss(), fit_intercept=fit_intercept, xp=np, block_bytes=64)
    out = np.empty(30, np.float32)
    model.predict_raw(w, 0.25, out)
    np.testing.assert_allclose(out, X @ w + (0.25 if fit_intercept else 0.0), rtol=1e-6, atol=1e-6)


def test_rejects_bad_inputs():
    X, y, w = make_problem("squared", 10, 3, np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        LocalLinearGradient(np.asfortranarray(X), y, SquaredLoss(), fit_intercept=True, xp=np)
    with pytest.raises(ValueError, match="dtype"):
        LocalLinearGradient(X, y.astype(np.float64), SquaredLoss(), fit_intercept=True, xp=np)
    model = LocalLinearGradient(X, y, SquaredLoss(), fit_intercept=True, xp=np)
    with pytest.raises(ValueError, match="w must have"):
        model.loss_gradient(w.astype(np.float64), 0.0, np.empty(5))


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_objective_gradient_matches_finite_differences(name, fit_intercept):
    """Assemble f(w, b) = sum/n + lam/2 ||w||^2 as the trainer does and check its gradient."""
    n, d, lam, h = 37, 4, 0.3, 1e-6
    X, y, w = make_problem(name, n, d, np.float64, seed=5)
    model = LocalLinearGradient(X, y, get_loss(name), fit_intercept=fit_intercept, xp=np, block_bytes=100)
    out = np.empty(d + 2)

    def objective_and_gradient(params):
        model.loss_gradient(params[:d].copy(), float(params[d]), out)
        value = out[d + 1] / n + 0.5 * lam * params[:d] @ params[:d]
        gradient = out[: d + 1] / n
        gradient[:d] += lam * params[:d]
        return value, gradient

    params = np.append(w, 0.2)
    _, gradient = objective_and_gradient(params)
    numeric = np.empty(d + 1)
    for j in range(d + 1):
        step = np.zeros(d + 1)
        step[j] = h
        numeric[j] = (objective_and_gradient(params + step)[0] - objective_and_gradient(params - step)[0]) / (2 * h)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)
    if not fit_intercept:
        assert gradient[d] == 0.0


@pytest.mark.parametrize("rows", [slice(3, 17), np.array([5, 0, 19, 19, 7])])
def test_loss_gradient_over_selected_rows(rows):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20, 4))
    y = (rng.random(20) > 0.5).astype(np.float64)
    w = rng.standard_normal(4)
    kernel = LocalLinearGradient(X, y, LogisticLoss(), fit_intercept=True, xp=np, block_bytes=3 * 32)
    out = np.empty(6)
    kernel.loss_gradient(w, 0.3, out, rows=rows)
    Xs, ys = X[rows], y[rows]
    z = Xs @ w + 0.3
    r = 1 / (1 + np.exp(-z)) - ys
    np.testing.assert_allclose(out[:4], Xs.T @ r, rtol=1e-12)
    np.testing.assert_allclose(out[4], r.sum(), rtol=1e-12)
    np.testing.assert_allclose(out[5], np.sum(np.logaddexp(0, z) - ys * z), rtol=1e-12)
