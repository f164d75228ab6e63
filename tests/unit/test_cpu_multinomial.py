"""The compiled multinomial CPU kernel (pgd/local/cpu_multinomial.py) against float64 NumPy references: shapes
(d = 1, n = 0, n not a multiple of the block or of the thread count), classes, weights, intercepts, row slices,
threads 1/2/3, extreme scores, NaN-poisoned outputs; and when LocalMultinomialGradient runs it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from pgd.local import cpu_multinomial  # noqa: E402
from pgd.local.cpu_multinomial import FusedMultinomialCPU  # noqa: E402
from pgd.local.multinomial import AUTO_MAX_CLASSES, LocalMultinomialGradient  # noqa: E402


def problem(n, d, classes, dtype, weighted, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d)).astype(dtype)
    labels = rng.integers(0, classes, n).astype(np.int64)
    weight = rng.uniform(0, 2, n).astype(dtype) if weighted else None
    params = rng.standard_normal((d + 1) * classes) * scale
    return X, labels, weight, params


def reference(X, labels, weight, params, classes, fit_intercept):
    """The sums in float64, computed directly: ``[Σ s x r (d, K), Σ s r (K) or 0, Σ s loss]``."""
    n, d = X.shape
    X64 = X.astype(np.float64)
    matrix = params.reshape(d + 1, classes)
    Z = X64 @ matrix[:d] + (matrix[d] if fit_intercept else 0.0)
    top = Z.max(axis=1, keepdims=True) if n else np.zeros((0, 1))
    total = np.exp(Z - top).sum(axis=1)
    s = np.ones(n) if weight is None else weight.astype(np.float64)
    loss = float(s @ (np.log(total) + top[:, 0] - Z[np.arange(n), labels]))
    R = np.exp(Z - top) / total[:, None]
    R[np.arange(n), labels] -= 1.0
    R *= s[:, None]
    intercept = R.sum(axis=0) if fit_intercept else np.zeros(classes)
    return np.concatenate([(X64.T @ R).ravel(), intercept, [loss]])


def run(X, labels, weight, params, classes, fit_intercept, threads=1, precision="float64", rows=None):
    kernel = FusedMultinomialCPU(X, labels, classes, fit_intercept=fit_intercept, sample_weight=weight,
                                 threads=threads, precision=precision)
    out = np.full(params.size + 1, np.nan)             # poisoned: every entry must be written
    kernel.sums_at(params, out, rows)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d, classes", [(0, 3, 2), (1, 1, 2), (13, 5, 3), (301, 33, 7), (700, 4, 12)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("threads", [1, 3])
def test_matches_the_float64_reference(dtype, n, d, classes, weighted, fit_intercept, threads):
    X, labels, weight, params = problem(n, d, classes, dtype, weighted, seed=n + d)
    expected = reference(X, labels, weight, params, classes, fit_intercept)
    got = run(X, labels, weight, params, classes, fit_intercept, threads)
    scale = 1.0 + np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * scale)     # float64 products
    data = run(X, labels, weight, params, classes, fit_intercept, threads, precision="data")
    tolerance = 1e-10 if dtype == np.float64 else 2e-5                           # float32 products (BLAS-like)
    np.testing.assert_allclose(data, expected, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("rows", [slice(0, 0), slice(5, 6), slice(17, 250), slice(100, None)])
def test_row_slices(rows):
    X, labels, weight, params = problem(257, 6, 4, np.float64, True, seed=3)
    expected = reference(X[rows], labels[rows], weight[rows], params, 4, True)
    np.testing.assert_allclose(run(X, labels, weight, params, 4, True, threads=2, rows=rows), expected,
                               rtol=1e-11, atol=1e-11 * (1 + np.abs(expected).max()))


def test_thread_counts_agree_and_each_is_reproducible():
    X, labels, weight, params = problem(1001, 9, 5, np.float32, True, seed=4)
    results = {threads: run(X, labels, weight, params, 5, True, threads, "data") for threads in (1, 2, 3)}
    for threads, result in results.items():
        np.testing.assert_array_equal(run(X, labels, weight, params, 5, True, threads, "data"), result)
        np.testing.assert_allclose(result, results[1], rtol=1e-9, atol=1e-9 * np.abs(results[1]).max())


def test_extreme_scores_neither_overflow_nor_lose_the_loss():
    """Scores of ±800 (exp would overflow without the shift by the row maximum): finite, equal to the
    reference, and a confidently wrong row costs its margin."""
    X, labels, weight, params = problem(64, 2, 3, np.float64, False, seed=5, scale=300.0)
    expected = reference(X, labels, weight, params, 3, True)
    got = run(X, labels, weight, params, 3, True)
    assert np.all(np.isfinite(got)) and expected[-1] > 1e3
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def _local(n, classes, choice, dtype=np.float64, **options):
    X, labels, weight, _ = problem(n, 5, classes, dtype, False, seed=6)
    return LocalMultinomialGradient(X, labels.astype(dtype), classes, fit_intercept=True, xp=np, host_kernel=choice,
                                    **options)


def test_the_local_gradient_runs_the_kernel_where_chosen():
    fused, blocked = _local(300, 4, "fused"), _local(300, 4, "blocked")
    assert fused._fused is not None and fused.kernel.startswith("fused one-pass CPU kernel (numba, dense, 4 classes")
    assert ("compiled" in fused.kernel or "disk cache" in fused.kernel) and blocked._fused is None
    assert blocked.kernel.startswith("blocked two-pass GEMM") and "PGD_CPU_KERNEL=blocked" in blocked.kernel
    small, many = _local(300, 4, "auto"), _local(300, AUTO_MAX_CLASSES + 1, "auto")
    assert small._fused is None and "slab below 64 MiB" in small.kernel
    assert many._fused is None
    params = np.random.default_rng(7).standard_normal(fused.n_params)
    for rows, gram in ((None, False), (slice(10, 200), False), (np.array([3, 7, 7, 150]), False), (None, True)):
        a, b = np.empty(fused.n_params + 1), np.empty(fused.n_params + 1)
        fused.sums_at(params, a, rows=rows, gram=gram)        # index rows and Gram products: the blocked path
        blocked.sums_at(params, b, rows=rows, gram=gram)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11 * np.abs(b).max())


def test_auto_takes_the_kernel_for_a_large_slab_with_few_classes(monkeypatch):
    monkeypatch.setattr("pgd.local.kernel_choice.AUTO_MIN_SLAB_BYTES_MULTINOMIAL", 1000)
    assert _local(300, AUTO_MAX_CLASSES, "auto")._fused is not None
    assert f"K = {AUTO_MAX_CLASSES + 1} above" in _local(300, AUTO_MAX_CLASSES + 1, "auto").kernel


def test_the_blocked_path_runs_where_the_kernel_cannot(monkeypatch):
    monkeypatch.setattr(cpu_multinomial, "unavailable_reason", lambda dtype: "numba is not installed (test)")
    local = _local(300, 3, "fused")
    assert local._fused is None and local.kernel.endswith("(numba is not installed (test))")
