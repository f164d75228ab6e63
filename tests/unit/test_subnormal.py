"""Row weights below the subnormal floor are 0 in every host gradient path (pgd/local/subnormal.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss
from pgd.local.multinomial import LocalMultinomialGradient
from pgd.local.sparse import SparseLinearGradient
from pgd.local.subnormal import ROW_WEIGHT_FLOOR_FACTOR, zero_tiny_weights


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_tiny_weights(dtype):
    floor = np.finfo(dtype).tiny * ROW_WEIGHT_FLOOR_FACTOR
    values = np.array([[1.0, -floor, floor / 2, -floor / 3], [np.finfo(dtype).tiny, 0.0, np.inf, np.nan]], dtype)
    weights, work = values.copy(), np.full_like(values, 7.0)
    zero_tiny_weights(weights, work, np)
    expected = np.array([[1.0, -floor, 0.0, 0.0], [0.0, 0.0, np.inf, np.nan]], dtype)
    np.testing.assert_array_equal(weights, expected)
    assert np.signbit(weights[0, 1])


def confident_rows(n=64, d=5, seed=0):
    """float32 rows whose logistic scores (intercept 0) lie in (-100, -80) with label 0: ``sigmoid(z)`` is a
    float32 subnormal or just above it, below the floor; a float64 reference of the unflushed sums."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[:, 0] = rng.uniform(-100, -80, n).astype(np.float32)
    w = np.zeros(d, np.float32)
    w[0] = 1.0
    return X, np.zeros(n, np.float32), w


def test_dense_blocked_path_drops_tiny_weights():
    X, y, w = confident_rows()
    local = LocalLinearGradient(X, y, get_loss("logistic"), fit_intercept=True, xp=np, host_kernel="blocked")
    out = np.full(X.shape[1] + 2, np.nan)
    local.loss_gradient(w, 0.0, out)
    assert np.all(out[:X.shape[1]] == 0.0)            # every row weight was below the floor
    assert 0 < out[X.shape[1]] < 1e-30                 # the intercept's sum keeps them
    z = X.astype(np.float64) @ w
    assert out[-1] == pytest.approx(float(np.sum(np.log1p(np.exp(z)))), rel=1e-5)


def test_sparse_blocked_path_drops_tiny_weights():
    X, y, w = confident_rows()
    local = SparseLinearGradient(scipy.sparse.csr_matrix(X), y, get_loss("logistic"), fit_intercept=True,
                                 compiled=False)
    out = np.full(X.shape[1] + 2, np.nan)
    local.loss_gradient(w, 0.0, out)
    assert np.all(out[:X.shape[1]] == 0.0)
    assert 0 < out[X.shape[1]] < 1e-30


def test_multinomial_blocked_path_drops_tiny_weights():
    X, _, _ = confident_rows()
    n, d, classes = X.shape[0], X.shape[1], 3
    labels = np.zeros(n, np.float32)
    local = LocalMultinomialGradient(X, labels, classes, fit_intercept=True, xp=np, host_kernel="blocked")
    params = np.zeros((d + 1) * classes)
    params.reshape(d + 1, classes)[0] = [0.0, 1.0, 1.0]   # classes 1, 2 score 80-100 below class 0
    out = np.full((d + 1) * classes + 1, np.nan)
    local.sums_at(params, out)
    gradient = out[: d * classes].reshape(d, classes)
    assert np.all(gradient == 0.0)    # p_1, p_2 < 1e-34 and p_0 - 1 = -(p_1 + p_2): below the floor
    intercepts = out[d * classes: (d + 1) * classes]
    assert np.all(intercepts[1:] > 0)  # the intercepts' sums keep them (p_0 - 1 rounds to 0 in float32)
    scores = X @ params.reshape(d + 1, classes)[:d].astype(np.float32)
    P = np.exp(scores - scores.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    assert np.any(X.T @ P[:, 1:] != 0.0)   # unflushed, the float32 products would not all be 0


class _OneRank:
    size = 1


def test_grid_objective_drops_tiny_weights():
    """The feature/hybrid grid's pass (one rank, no collectives): the coefficient gradient of rows whose
    weights are below the floor is exactly 0, the intercept's sum keeps them."""
    from pgd.strategies.grid import GridCommunicators, GridObjective

    X, y, w = confident_rows()
    n, d = X.shape
    comms = GridCommunicators("1 x 1", _OneRank(), _OneRank(), _OneRank())
    objective = GridObjective(X, y, get_loss("logistic"), comms, coords=(0, 0), n_global=n, d_global=d,
                              col_range=(0, d), l2=0.0, fit_intercept=True, xp=np)
    grad = np.full(objective.n_params, np.nan)
    objective.value_and_grad(np.concatenate([w.astype(np.float64), [0.0]]), grad)
    assert np.all(grad[:d] == 0.0)
    assert 0 < grad[d] < 1e-30
