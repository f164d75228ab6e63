"""The explicit-vector intrinsics (pgd/local/simd.py) against float64 references, and the dense kernel's use
of them for float32 rows."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from pgd.local import cpu_kernels as K  # noqa: E402
from pgd.local.simd import eight_rows_added, eight_scores, eight_scores_eight_added  # noqa: E402

WIDTHS = (1, 2, 5, 7, 8, 9, 13, 16, 24, 30, 31, 100, 1000)


@numba.njit
def scores(X, first, w, z, k, b):
    eight_scores(X, first, w, z, k, b)


@numba.njit
def added(X, first, r, k, grad):
    eight_rows_added(X, first, r, k, grad)


@numba.njit
def both(X, ahead, w, z, k, b, start, r, grad):
    eight_scores_eight_added(X, ahead, w, z, k, b, start, r, grad)


def rows_and_weights(n, d, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal(d).astype(np.float32),
            rng.standard_normal(12).astype(np.float32), rng.standard_normal(d))


def score_error(z, X, w, b):
    """Largest error of ``z`` against the float64 scores, relative to the sum of the products' magnitudes."""
    X64 = X.astype(np.float64)
    return np.max(np.abs(z - (X64 @ w + b)) / (np.abs(X64) @ np.abs(w.astype(np.float64))))


def added_error(grad, before, X, r):
    X64, r64 = X.astype(np.float64), r.astype(np.float64)
    return np.max(np.abs(grad - (before + r64 @ X64)) / (np.abs(r64) @ np.abs(X64) + 1e-300))


@pytest.mark.parametrize("d", WIDTHS)
def test_eight_scores_and_rows_added(d):
    """Eight rows (the last eight of the array: masked loads past the last full chunk stay inside it) against
    float64; float32 products and sums, so within a few float32 roundings; nothing else written."""
    X, w, r, grad = rows_and_weights(11, d, seed=d)
    z = np.full(12, np.nan)
    scores(X, 3, w, z, 2, 0.25)
    assert np.isnan(z[:2]).all() and np.isnan(z[10:]).all()
    assert score_error(z[2:10], X[3:11], w, 0.25) < 1e-6
    before = grad.copy()
    added(X, 3, r, 4, grad)
    assert added_error(grad, before, X[3:11], r[4:12]) < 1e-6


@pytest.mark.parametrize("d", WIDTHS)
def test_eight_scores_eight_added(d):
    """The one-sweep pair: scores of rows 12-19 and rows 1-8 added, each as the two alone compute them."""
    X, w, r, grad = rows_and_weights(20, d, seed=100 + d)
    z, alone_z = np.full(12, np.nan), np.full(12, np.nan)
    alone_grad = grad.copy()
    both(X, 12, w, z, 3, -0.5, 1, r, grad)
    scores(X, 12, w, alone_z, 3, -0.5)
    added(X, 1, r, 3, alone_grad)
    np.testing.assert_array_equal(z, alone_z)
    np.testing.assert_array_equal(grad, alone_grad)
    assert score_error(z[3:11], X[12:20], w, -0.5) < 1e-6


def fma32(a, b, c):
    """float32 ``a * b + c`` in one rounding: the product of two float32 is exact in float64, so only the
    float64 sum rounds before the float32 rounding (that double rounding differs from one rounding only on
    exact ties of float64 results, about 2^-29 of random cases)."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def rows_combined(X, r, chains):
    """``sum_i r_i x_i`` over eight float32 rows in float32, as ``chains`` chains of multiply-adds (rows
    ``i, i + 8 / chains, ...`` in chain ``i``), then the chains added in order."""
    per_chain = 8 // chains
    partial = []
    for c in range(chains):
        rows = range(c * per_chain, (c + 1) * per_chain)
        total = X[rows[0]] * r[rows[0]]
        for i in rows[1:]:
            total = fma32(X[i], r[i], total)
        partial.append(total)
    combined = partial[0]
    for total in partial[1:]:
        combined = combined + total
    return combined


@pytest.mark.parametrize("d", (16, 100))
def test_rows_added_in_two_chains_of_four(d):
    """Eight rows are combined as two chains of four multiply-adds and then their sum, as written (half the
    latency of one chain of eight): bit for bit, where one chain of eight (what LLVM made of it when numba's
    fastmath pass let it reassociate the sum into the chains) rounds differently."""
    X, _, r, _ = rows_and_weights(8, d, seed=7 + d)
    grad = np.zeros(d)
    K._dense_accumulate_vectors(X, 0, 8, r, grad, 0, 0)          # compiled with the kernel's fastmath flags
    two = rows_combined(X, r[:8], chains=2).astype(np.float64)
    one = rows_combined(X, r[:8], chains=1).astype(np.float64)
    assert not np.array_equal(one, two)
    np.testing.assert_array_equal(grad, two)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through the C library: Linux")
@pytest.mark.parametrize("d", [5, 13, 30])
def test_masked_columns_read_nothing_past_the_row(d):
    """Rows that end where an unreadable page begins: the masked-off lanes of the last chunk touch no memory
    (a plain vector load there would fault)."""
    page = mmap.PAGESIZE
    memory = mmap.mmap(-1, 2 * page)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(address + page, page, 0) == 0
    try:
        floats = np.frombuffer(memory, dtype=np.float32, count=page // 4)
        n = page // (4 * d)
        X = floats[page // 4 - n * d:].reshape(n, d)
        X[:] = 1.0
        z, grad = np.zeros(8), np.zeros(d)
        scores(X, n - 8, np.ones(d, np.float32), z, 0, 0.0)
        added(X, n - 8, np.ones(8, np.float32), 0, grad)
        assert (z == d).all() and (grad == 8).all()
        doubles = np.frombuffer(memory, dtype=np.float64, count=page // 8)     # float64 rows, the sweep
        n = page // (8 * d)
        X64 = doubles[page // 8 - n * d:].reshape(n, d)
        X64[:] = 1.0
        z, grad = np.zeros(8), np.zeros(d)
        both(X64, n - 8, np.ones(d), z, 0, 0.0, n - 8, np.ones(8), grad)
        assert (z == d).all() and (grad == 8).all()
    finally:
        del floats, X, doubles, X64
        libc.mprotect(address + page, page, 3)


@pytest.mark.parametrize("d", WIDTHS)
def test_eight_scores_eight_added_float64(d):
    """The one-sweep pair on float64 rows (eight float64 lanes; long float64 rows take it): against float64
    references to a few roundings, and the same as the float64 loops to rounding."""
    X, w, r, grad = rows_and_weights(20, d, seed=200 + d)
    X, w, r = X.astype(np.float64) + 1e-3, w.astype(np.float64), r.astype(np.float64)
    z, loops_z = np.full(12, np.nan), np.full(12, np.nan)
    before, loops_grad = grad.copy(), grad.copy()
    both(X, 12, w, z, 3, -0.5, 1, r, grad)
    assert np.isnan(z[:3]).all() and np.isnan(z[11:]).all()
    assert score_error(z[3:11], X[12:20], w, -0.5) < 1e-14
    assert added_error(grad, before, X[1:9], r[3:11]) < 1e-14
    K._dense_scores_accumulate_loops(X, w, -0.5, 12, loops_z, 1, r, 3, loops_grad)
    np.testing.assert_allclose(z, loops_z, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grad, loops_grad, rtol=1e-13, atol=1e-13)


def test_float32_rows_take_the_vector_functions():
    """The dense row functions compiled for float32 rows with ``precision="data"`` call the explicit-vector
    functions; float64 rows, and float32 rows with float64 products, call the loops, but for the one-sweep
    pair of long float64 rows (explicit float64 vectors)."""
    def called(dtype, precision, d):
        rng = np.random.default_rng(3)
        X, y = rng.standard_normal((64, d)).astype(dtype), (rng.random(64) < 0.5).astype(dtype)
        weight, w, b = None, rng.standard_normal(d), 0.5
        workspace = K.dense_workspace(X, 1, precision)
        rows = K._dense_rows_long if K.long_rows(d, X.itemsize) else K._dense_rows
        fresh = numba.njit(nogil=True, fastmath=K._FASTMATH, error_model="numpy")(rows.py_func)
        fresh(X, y, weight, workspace.weights(w), b, 1, 0, 64, np.zeros(d), workspace.z[0], workspace.rbuf[0],
              workspace.lbuf[0])
        code = fresh.inspect_llvm(fresh.signatures[0])
        return {name for name in ("_dense_scores_vectors", "_dense_accumulate_vectors", "_dense_scores_loops",
                                  "_dense_accumulate_loops", "_dense_scores_accumulate_vectors",
                                  "_dense_scores_accumulate_loops") if name in code}

    assert called(np.float32, "data", 16) == {"_dense_scores_vectors", "_dense_accumulate_vectors"}
    assert called(np.float32, "data", 1000) >= {"_dense_scores_accumulate_vectors"}
    assert called(np.float32, "float64", 16) == {"_dense_scores_loops", "_dense_accumulate_loops"}
    assert called(np.float64, "data", 16) == {"_dense_scores_loops", "_dense_accumulate_loops"}
    assert "_dense_scores_accumulate_vectors" in called(np.float64, "data", 1000)       # long float64 rows
    assert "_dense_scores_accumulate_loops" in called(np.float32, "float64", 1000)
