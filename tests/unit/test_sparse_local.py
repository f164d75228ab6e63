"""The CSR local gradient against the dense one, and the CSR column moments and Gram sums (no MPI)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss
from pgd.local.sparse import SparseLinearGradient, local_gradient, row_blocks, row_range


def _matrix(n=57, d=13, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = scipy.sparse.random(n, d, density=0.2, random_state=seed, format="lil", dtype=dtype)
    X[3, :] = 0          # an empty row
    X[:, 5] = 0          # an all-zero column
    X = X.tocsr()
    y = (rng.random(n) < 0.5).astype(dtype)
    weight = rng.uniform(0.5, 2.0, n).astype(dtype)
    return X, y, weight


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_sparse_sums_match_dense(loss, weighted, compiled, monkeypatch):
    monkeypatch.setenv("PGD_CPU_KERNEL", "fused")
    X, y, weight = _matrix()
    s = weight if weighted else None
    dense = LocalLinearGradient(X.toarray(), y, get_loss(loss), fit_intercept=True, xp=np, sample_weight=s)
    sparse = SparseLinearGradient(X, y, get_loss(loss), fit_intercept=True, sample_weight=s, compiled=compiled)
    assert sparse.kernel.startswith("fused one-pass CPU kernel (numba, CSR" if compiled else "SciPy CSR"), sparse.kernel
    params = np.random.default_rng(1).standard_normal(X.shape[1] + 1)
    for gram in (False, True):
        for rows in (None, slice(4, 40), np.array([0, 3, 9, 56, 9])):
            if gram and rows is not None:
                continue
            want, got = np.zeros(X.shape[1] + 2), np.zeros(X.shape[1] + 2)
            dense.sums_at(params, want, gram=gram, rows=rows)
            sparse.sums_at(params, got, gram=gram, rows=rows)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    out, expected = np.empty(X.shape[0]), X.toarray() @ params[:-1] + params[-1]
    sparse.predict_raw(params[:-1].copy(), params[-1], out)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_kernel_named_and_fallback(monkeypatch):
    X, y, _ = _matrix()
    monkeypatch.setenv("PGD_CPU_KERNEL", "auto")
    scipy_path = SparseLinearGradient(X, y, get_loss("squared"), fit_intercept=False, compiled=False)
    assert scipy_path.kernel.startswith("SciPy CSR")
    chosen = local_gradient(X, y, get_loss("squared"), fit_intercept=False, xp=np)
    assert isinstance(chosen, SparseLinearGradient) and "below 256 MiB" in chosen.kernel   # auto: small slab
    monkeypatch.setenv("PGD_CPU_KERNEL", "blocked")
    assert "PGD_CPU_KERNEL=blocked" in local_gradient(X, y, get_loss("squared"), fit_intercept=False, xp=np).kernel
    assert isinstance(local_gradient(X.toarray(), y, get_loss("squared"), fit_intercept=False, xp=np),
                      LocalLinearGradient)


@pytest.mark.parametrize("compiled", [False, True])
def test_empty_slab_contributes_zeros(compiled, monkeypatch):
    monkeypatch.setenv("PGD_CPU_KERNEL", "fused")
    X = scipy.sparse.csr_matrix((0, 6))
    local = SparseLinearGradient(X, np.zeros(0), get_loss("logistic"), fit_intercept=True, compiled=compiled)
    for gram in (False, True):
        out = np.full(8, 7.0)
        local.sums_at(np.ones(7), out, gram=gram)
        assert not out.any()


def test_row_blocks_and_range_cover_rows():
    X, _, _ = _matrix(n=200)
    blocks = list(row_blocks(X, max_nnz=17))
    assert blocks[0][0] == 0 and blocks[-1][1] == 200
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    part = row_range(X, 10, 30)
    np.testing.assert_array_equal(part.toarray(), X[10:30].toarray())


def test_int64_indices():
    X, y, _ = _matrix()
    X64 = scipy.sparse.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)), shape=X.shape)
    a = SparseLinearGradient(X64, y, get_loss("logistic"), fit_intercept=True, compiled=False)
    b = SparseLinearGradient(X, y, get_loss("logistic"), fit_intercept=True, compiled=False)
    params, out_a, out_b = np.linspace(-1, 1, X.shape[1] + 1), np.zeros(X.shape[1] + 2), np.zeros(X.shape[1] + 2)
    a.sums_at(params, out_a)
    b.sums_at(params, out_b)
    np.testing.assert_array_equal(out_a, out_b)


@pytest.mark.parametrize("weighted", [False, True])
def test_csr_column_moments_need_no_cancellation(weighted):
    """A stored column near 1e8 with unit spread: the two passes about the global mean keep the variance
    that ``Σ x² − W mean²`` would lose (its rounding, about 1e-16 × 3e18, exceeds the true 300); all-zero
    columns are fine."""
    from mpi4py import MPI

    from pgd.strategies.standardize import column_moments

    rng = np.random.default_rng(4)
    dense = np.zeros((300, 5))
    dense[:, 0] = 1e8 + rng.standard_normal(300)
    dense[::3, 1] = rng.standard_normal(100)
    weight = rng.uniform(0.5, 2, 300) if weighted else None
    total, mean, m2 = column_moments(MPI.COMM_SELF, scipy.sparse.csr_matrix(dense), weight, np, 64)
    s = np.ones(300) if weight is None else weight
    expected_mean = s @ dense / s.sum()
    np.testing.assert_allclose(total, s.sum(), rtol=1e-14)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(m2, s @ (dense - expected_mean) ** 2, rtol=1e-9, atol=1e-12)
    naive = s @ dense[:, 0] ** 2 - total * mean[0] ** 2
    assert abs(naive - m2[0]) > 1e-3 * m2[0]      # the test would catch the one-pass formula


def test_csr_column_moments_sum_repeated_columns():
    """A column stored twice in a row counts as the sum of the two values, as SciPy and the gradient do."""
    from mpi4py import MPI

    from pgd.strategies.standardize import column_moments

    data = np.array([1.0, 2.0, 5.0, 3.0, 4.0])
    X = scipy.sparse.csr_matrix((data, np.array([0, 0, 1, 1, 0]), np.array([0, 3, 3, 5])), shape=(3, 2))
    assert not X.has_canonical_format
    dense = X.toarray()                      # [[3, 5], [0, 0], [4, 3]]
    total, mean, m2 = column_moments(MPI.COMM_SELF, X, None, np, 64)
    np.testing.assert_allclose(mean, dense.mean(0), rtol=1e-15)
    np.testing.assert_allclose(m2, ((dense - dense.mean(0)) ** 2).sum(0), rtol=1e-14)
    np.testing.assert_array_equal(X.data, data)     # the slab itself is left as it is
