"""The compiled CPU kernels (pgd/local/cpu_kernels.py) against float64 NumPy references."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

pytest.importorskip("numba")
scipy_sparse = pytest.importorskip("scipy.sparse")

from pgd.local import cpu_kernels as K  # noqa: E402
from pgd.local.linear import LocalLinearGradient  # noqa: E402
from pgd.local.losses import get_loss  # noqa: E402

LOSSES = ("squared", "logistic", "gram")
SHAPES = [(0, 3), (1, 1), (5, 1), (7, 2), (13, 5), (37, 17), (101, 33)]


def reference(X, y, w, b, loss, weight=None):
    """``(loss_sum, grad_sum, intercept_sum, weight_sum)`` in float64 NumPy, straight from the formulas."""
    X64, y64 = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    s = np.ones(X64.shape[0]) if weight is None else np.asarray(weight, dtype=np.float64)
    z = X64 @ w + b
    if loss == "squared":
        r, pointwise = z - y64, 0.5 * (z - y64) ** 2
    elif loss == "logistic":
        r, pointwise = 0.5 * (1 + np.tanh(z / 2)) - y64, np.logaddexp(0, z) - y64 * z
    else:
        r, pointwise = z, z * z
    return float(s @ pointwise), X64.T @ (s * r), float(s @ r), float(s.sum())


def problem(n, d, dtype, loss, weighted, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d)).astype(dtype)
    y = (rng.random(n) < 0.4).astype(dtype) if loss == "logistic" else rng.standard_normal(n).astype(dtype)
    weight = rng.uniform(0, 2, n).astype(dtype) if weighted else None
    w = rng.standard_normal(d) / np.sqrt(d)
    return X, y, weight, w, float(rng.standard_normal())


def assert_matches(result, expected, rtol=1e-11):
    loss_sum, grad, intercept, weight_sum = result
    e_loss, e_grad, e_intercept, e_weight = expected
    scale = 1.0 + np.abs(e_grad).max(initial=0.0)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, e_grad, rtol=rtol, atol=rtol * scale)
    assert loss_sum == pytest.approx(e_loss, rel=rtol, abs=rtol)
    assert intercept == pytest.approx(e_intercept, rel=rtol, abs=rtol * scale)
    assert weight_sum == pytest.approx(e_weight, rel=1e-6, abs=1e-9)


def poisoned(workspace):
    """``workspace`` with every buffer NaN, so a value the kernel reads before writing shows."""
    for buffer in (workspace.partials, workspace.scalars, workspace.w_cast, workspace.z, workspace.rbuf,
                   workspace.lbuf):
        buffer.fill(np.nan)
    return workspace


def poisoned_workspace(d, threads):
    return poisoned(K.Workspace(d, threads))


def test_available():
    assert K.available("dense", np.float32), K.unavailable_reason("dense", np.float32)
    assert set(K.warm_up("dense", np.float32)) == {"dense/float32"}
    assert K.available(), K.unavailable_reason()
    report = K.warm_up()
    assert set(report) == {"dense/float32", "dense/float64", "csr/float32", "csr/float64"}
    assert all(entry["seconds"] >= 0 and isinstance(entry["cache_hit"], bool) for entry in report.values())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_dense_matches_reference(shape, threads, weighted, dtype, loss):
    X, y, weight, w, b = problem(*shape, dtype, loss, weighted)
    out = np.full(shape[1], np.nan)
    workspace = poisoned(K.dense_workspace(X, threads))
    result = K.dense_loss_grad(X, y, w, b, loss, sample_weight=weight, out_grad=out, threads=threads,
                               workspace=workspace)
    assert result[1] is out
    assert_matches(result, reference(X, y, w, b, loss, weight))
    assert workspace.fits(shape[1], threads, K.dense_block_rows(shape[1], X.itemsize), np.float64)   # it was used


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(61, 600), (23, 1031), (203, 520)])
def test_dense_long_rows(shape, threads, dtype, loss):
    """Rows longer than LONG_ROW_BYTES: blocks of LONG_ROW_BLOCK_BYTES in groups of eight, each block's
    gradient pass overlapped with the next block's scores; odd counts (blocks, chunks and groups that do
    not divide the rows); float32 rows combined in float64 and, with ``precision="data"``, in float32."""
    itemsize = np.dtype(dtype).itemsize
    assert K.long_rows(shape[1], itemsize)
    rows = K.dense_block_rows(shape[1], itemsize)
    assert rows == min(256, K.LONG_ROW_BLOCK_BYTES // (shape[1] * itemsize) // 8 * 8)
    for weighted in (False, True):
        X, y, weight, w, b = problem(*shape, dtype, loss, weighted, seed=3)
        result = K.dense_loss_grad(X, y, w, b, loss, sample_weight=weight, threads=threads,
                                   workspace=poisoned(K.dense_workspace(X, threads)))
        assert_matches(result, reference(X, y, w, b, loss, weight))
        if dtype == np.float32:
            workspace = poisoned(K.dense_workspace(X, threads, "data"))
            result = K.dense_loss_grad(X, y, w, b, loss, sample_weight=weight, threads=threads, precision="data",
                                       workspace=workspace)
            w32 = w.astype(np.float32).astype(np.float64)
            assert_matches(result, reference(X, y, w32, b, loss, weight), rtol=2e-5)


def test_dense_block_rows():
    """Blocks in multiples of eight rows (four where fewer fit, at least eight for long rows), within budget."""
    assert K.dense_block_rows(100, 4, block_bytes=16384) == 40
    assert K.dense_block_rows(100, 4, block_bytes=4800) == 8
    assert K.dense_block_rows(1000, 8, block_bytes=16384) == 4            # fewer than eight fit: four
    assert K.dense_block_rows(1, 8) == 256
    assert K.dense_block_rows(1000, 8) == 16 and K.dense_block_rows(100000, 8) == 8   # long rows
    assert K.dense_block_rows(600, 4) == 48


def to_csr(X, index_dtype, indptr_dtype=np.int64, empty_every=0):
    """CSR arrays of ``X`` with some entries (and, with ``empty_every``, whole rows) zeroed out."""
    X = X.copy()
    X[np.abs(X) < 0.7] = 0                     # about half the entries
    if empty_every:
        X[::empty_every] = 0                   # empty rows
    if X.shape[1] > 2:
        X[:, 1] = 0                            # an all-zero column
    A = scipy_sparse.csr_matrix(X)
    return X, A.data, A.indices.astype(index_dtype), A.indptr.astype(indptr_dtype)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_csr_matches_reference(shape, threads, weighted, index_dtype, dtype, loss):
    X, y, weight, w, b = problem(*shape, dtype, loss, weighted, seed=1)
    X, data, indices, indptr = to_csr(X, index_dtype, indptr_dtype=index_dtype, empty_every=3)
    out = np.full(shape[1], np.nan)
    result = K.csr_loss_grad(data, indices, indptr, y, w, b, loss, sample_weight=weight, out_grad=out,
                             threads=threads, workspace=poisoned_workspace(shape[1], threads))
    assert_matches(result, reference(X, y, w, b, loss, weight))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_csr_slice_of_a_larger_indptr(threads):
    """A rank's slice: ``indptr`` starts above 0 and ``data``/``indices`` are the whole arrays."""
    X, y, _, w, b = problem(50, 9, np.float64, "logistic", False, seed=2)
    X, data, indices, indptr = to_csr(X, np.int32, empty_every=4)
    rows = slice(11, 40)
    result = K.csr_loss_grad(data, indices, indptr[rows.start:rows.stop + 1], y[rows], w, b, "logistic",
                             threads=threads)
    assert_matches(result, reference(X[rows], y[rows], w, b, "logistic"))


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_threads_deterministic_and_agree(kind):
    X, y, weight, w, b = problem(1003, 31, np.float32, "logistic", True, seed=3)
    if kind == "csr":
        _, data, indices, indptr = to_csr(X, np.int32, empty_every=5)

        def run(threads):
            return K.csr_loss_grad(data, indices, indptr, y, w, b, "logistic", sample_weight=weight,
                                   threads=threads)
    else:
        def run(threads):
            return K.dense_loss_grad(X, y, w, b, "logistic", sample_weight=weight, threads=threads)
    results = {threads: run(threads) for threads in (1, 2, 3)}
    ballast = []
    for threads, (loss_sum, grad, intercept, weight_sum) in results.items():
        for size in range(1, 9):   # fresh buffers at other addresses each time: sums must not care
            ballast.append(np.empty(size * 24 + threads))
            again = run(threads)
            assert (again[0], again[2], again[3]) == (loss_sum, intercept, weight_sum)
            np.testing.assert_array_equal(again[1], grad)   # bit for bit, run to run
        np.testing.assert_allclose(grad, results[1][1], rtol=1e-12, atol=1e-12 * np.abs(grad).max())
        assert loss_sum == pytest.approx(results[1][0], rel=1e-13)
    assert not np.array_equal(results[1][1], np.zeros_like(results[1][1]))


@pytest.mark.parametrize("indptr", [
    [0], [0, 0, 0], [0, 5], [0, 1, 2, 3, 4, 5, 6, 7], [0, 100, 100, 101, 102, 300],
    [7, 7, 9, 30, 30, 31], [0, 0, 0, 0, 50, 50, 50],
])
@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
def test_csr_chunk_bounds(indptr, chunks):
    indptr = np.array(indptr, dtype=np.int64)
    bounds = K.csr_chunk_bounds(indptr, chunks)
    n = len(indptr) - 1
    assert len(bounds) == chunks + 1 and bounds[0] == 0 and bounds[-1] == n
    assert np.all(np.diff(bounds) >= 0)
    nnz = indptr[bounds[1:]] - indptr[bounds[:-1]]
    heaviest_row = np.diff(indptr).max(initial=0)
    assert nnz.max(initial=0) <= -(-(indptr[-1] - indptr[0]) // chunks) + heaviest_row


def test_dense_chunk_bounds():
    assert K.dense_chunk_bounds(10, 3).tolist() == [0, 0, 0, 10]
    assert K.dense_chunk_bounds(0, 2).tolist() == [0, 0, 0]
    assert K.dense_chunk_bounds(2, 3).tolist() == [0, 0, 0, 2]
    assert K.dense_chunk_bounds(100, 3).tolist() == [0, 32, 64, 100]    # inner bounds: multiples of 8


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("mode", ["squared", "logistic", "gram"])
@pytest.mark.parametrize("rows", [None, slice(3, 50), slice(60, 60)])
def test_fused_cpu_gradient_matches_local_linear_gradient(rows, mode, fit_intercept, sparse):
    """Same ``out`` layout and values as pgd.local.linear's blocked path, for the whole slab and slices."""
    loss = "logistic" if mode == "logistic" else "squared"
    X, y, weight, w, b = problem(61, 7, np.float64, loss, True, seed=4)
    if sparse:
        X, data, indices, indptr = to_csr(X, np.int64, empty_every=6)
        slab = (data, indices, indptr, X.shape[1])
    else:
        slab = X
    params = np.append(w, b)
    part = slice(None) if rows is None else rows      # (the blocked Gram product has no ``rows``)
    blocked = LocalLinearGradient(X[part], y[part], get_loss(loss), fit_intercept=fit_intercept, xp=np,
                                  sample_weight=weight[part], block_bytes=7 * 8 * 5)
    expected, got = np.empty(9), np.full(9, np.nan)
    blocked.sums_at(params, expected, gram=mode == "gram")
    fused = K.FusedCPUGradient(slab, y, fit_intercept=fit_intercept, sample_weight=weight, threads=2)
    fused(params, mode, got, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)
    if rows is None:
        assert fused.weight_sum == pytest.approx(float(weight.sum(dtype=np.float64)))
    assert "numba" in fused.kernel


@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("threads", [1, 3])
def test_data_precision_float32(threads, loss, kind):
    """``precision="data"``: products inside a row in float32; sums over rows still float64."""
    X, y, weight, w, b = problem(203, 19, np.float32, loss, True, seed=5)
    if kind == "csr":
        X, data, indices, indptr = to_csr(X, np.int32, empty_every=7)
        result = K.csr_loss_grad(data, indices, indptr, y, w, b, loss, sample_weight=weight, threads=threads,
                                 precision="data", workspace=K.csr_workspace(19, np.float32, threads, "data"))
    else:
        result = K.dense_loss_grad(X, y, w, b, loss, sample_weight=weight, threads=threads, precision="data",
                                   workspace=K.dense_workspace(X, threads, "data"))
    # w rounded to float32 is the model the products see: compare with it, to float32 rounding
    assert_matches(result, reference(X, y, w.astype(np.float32).astype(np.float64), b, loss, weight), rtol=2e-5)
    np.testing.assert_allclose(result[1], reference(X, y, w, b, loss, weight)[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("shape", "rtol"), [((203, 19), 1e-13), ((97, 600), 1e-6)])
def test_data_precision_same_groups_for_any_thread_count(shape, rtol):
    """Chunks start on multiples of eight rows, so the rows combined in float32 are the same groups for 1, 2
    and 3 threads: the results differ only by the order of float64 sums.  Long rows: a chunk's first block
    is scored by the plain scores pass and later blocks by the overlapped sweeps, two loops whose float32
    dot products may round differently, so there the thread counts agree to float32 rounding."""
    X, y, weight, w, b = problem(*shape, np.float32, "logistic", True, seed=7)
    results = [K.dense_loss_grad(X, y, w, b, "logistic", sample_weight=weight, threads=threads, precision="data",
                                 workspace=K.dense_workspace(X, threads, "data")) for threads in (1, 2, 3)]
    for result in results[1:]:
        assert_matches(result, results[0], rtol=rtol)


def logistic_reference(z, y):
    """``(loss, sigmoid(z) - y)`` of one score from ``math.exp``/``math.log1p``, the kernel's formulas:
    ``sigmoid(z) - y = (1 - y) sigmoid(z) - y sigmoid(-z)``, which for labels 0 and 1 does not cancel."""
    e = math.exp(-abs(z))
    large, small = 1 / (1 + e), e / (1 + e)          # sigmoid(|z|), sigmoid(-|z|)
    residual = (1 - y) * (large if z >= 0 else small) - y * (small if z >= 0 else large)
    return max(z, 0.0) - y * z + math.log1p(e), residual


@pytest.mark.parametrize("y_value", [0.0, 1.0])
def test_logistic_extreme_scores(y_value):
    """The kernel's own exp/log1p: full float64 accuracy for every score, nothing overflows; below
    exp(-708) (3e-308) the value is clipped like pgd.local.losses clips it, and the gradient's row
    weights below 1.5e-300 are 0."""
    z = np.concatenate([np.linspace(-800, 800, 4001), [0.0, -0.0, 1e-300, -1e-300, 36.7, -36.7, 1e-9, -1e-9]])
    X, y, ones = z[:, None].copy(), np.full(z.size, y_value), np.ones(1)
    sums = np.empty((z.size, 3))
    for i in range(z.size):
        loss_sum, grad, r_sum, _ = K.dense_loss_grad(X[i:i + 1], y[i:i + 1], ones, 0.0, "logistic")
        sums[i] = loss_sum, r_sum, grad[0]
    for i, zi in enumerate(z):
        loss, residual = logistic_reference(zi, y_value)
        assert sums[i, 0] == pytest.approx(loss, rel=4e-16, abs=4e-308), zi
        assert sums[i, 1] == pytest.approx(residual, rel=4e-16, abs=4e-308), zi
        # the gradient's row weights below _weight_floor (1.5e-300) are 0: test_row_weights_below_the_floor
        assert sums[i, 2] == pytest.approx(residual * zi, rel=4e-16, abs=1.5e-300 * abs(zi)), zi


def logistic_block(z, y_value, weight):
    """The kernel's logistic terms of the scores ``z`` in one block: the ``s r``, ``rbuf`` and ``s loss`` it
    writes, and the sums it returns."""
    m = z.size
    scores, rbuf, lbuf = z.copy(), np.full(m, np.nan), np.full(m, np.nan)
    sums = K._residual_terms(scores, np.full(m, y_value), weight, 0, m, 1, rbuf, lbuf)
    return scores, rbuf, lbuf, sums


@pytest.mark.parametrize("y_value", [0.0, 1.0])
def test_logistic_terms_vectorised(y_value):
    """The block loops themselves (vectorised: thousands of scores in one call, not one row at a time),
    element by element: the same full float64 accuracy as the one-row path, weighted and not."""
    z = np.concatenate([np.linspace(-800, 800, 4001), np.linspace(-3, 3, 1003), [0.0, -0.0, 1e-300, -1e-300]])
    weight = np.random.default_rng(0).uniform(0.5, 2.0, z.size)
    for s in (None, weight):
        scores, rbuf, lbuf, sums = logistic_block(z, y_value, s)
        factor = np.ones(z.size) if s is None else s
        for i, zi in enumerate(z):
            loss, residual = logistic_reference(zi, y_value)
            assert lbuf[i] == pytest.approx(loss * factor[i], rel=5e-16, abs=1e-307), zi
            assert scores[i] == pytest.approx(residual * factor[i], rel=5e-16, abs=1e-307), zi
            assert rbuf[i] == (scores[i] if abs(scores[i]) >= np.finfo(np.float64).tiny * 2.0 ** 26 else 0.0)
        assert sums[0] == pytest.approx(math.fsum(lbuf), rel=1e-14)
        assert sums[1] == pytest.approx(math.fsum(scores), rel=1e-14, abs=1e-14)
        assert sums[2] == pytest.approx(math.fsum(factor), rel=1e-14)


@pytest.mark.parametrize("y_value", [0.0, 1.0])
def test_float32_logistic_terms(y_value):
    """float32 rows with ``precision="data"`` (float32 ``rbuf`` and ``lbuf``) take the float32 terms: each
    within a few float32 roundings (1e-6 relative) of the exact term of the score rounded to float32, down
    to float32's smallest normal numbers; saturated beyond |z| = 87 (``exp(-|z|)`` counted 0); the sums
    float64, of the values written."""
    z = np.concatenate([np.linspace(-800, 800, 4001), np.linspace(-3, 3, 1003),
                        [0.0, -0.0, 1e-30, -1e-30, 86.9, -86.9, 87.1, -87.1]])
    weight = np.random.default_rng(1).uniform(0.5, 2.0, z.size).astype(np.float32)
    tiny = float(np.finfo(np.float32).tiny)
    floor = tiny * 2.0 ** 26
    for s in (None, weight):
        m = z.size
        scores, rbuf, lbuf = z.copy(), np.full(m, np.nan, np.float32), np.full(m, np.nan, np.float32)
        sums = K._residual_terms(scores, np.full(m, y_value, np.float32), s, 0, m, 1, rbuf, lbuf)
        factor = np.ones(m) if s is None else s.astype(np.float64)
        for i, zi in enumerate(z):
            loss, residual = logistic_reference(float(np.float32(zi)), y_value)
            assert lbuf[i] == pytest.approx(loss * factor[i], rel=1e-6, abs=4 * tiny), zi
            assert scores[i] == pytest.approx(residual * factor[i], rel=1e-6, abs=4 * tiny), zi
            assert rbuf[i] == (np.float32(scores[i]) if abs(scores[i]) >= floor else 0.0), zi
        # saturated: the float64 terms would give the exact 1.4e-38 (still a normal float32) here
        assert scores[z == (-87.1 if y_value == 0.0 else 87.1)] == 0.0
        assert sums[0] == pytest.approx(math.fsum(lbuf.astype(np.float64)), rel=1e-14)
        assert sums[1] == pytest.approx(math.fsum(scores), rel=1e-14, abs=1e-14)
        assert sums[2] == pytest.approx(math.fsum(factor), rel=1e-14)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_weights_below_the_floor_are_zero(dtype, mode):
    """Residuals whose magnitude is below ``_weight_floor`` (the dtype's smallest normal times 2^26) are
    stored as 0 for the combination of rows, so that no subnormal reaches the gradient pass; the float64
    copy in ``z`` (the intercept's sum) and the loss keep them."""
    floor = np.finfo(dtype).tiny * 2.0 ** 26
    if mode == 1:     # logistic, y = 0: r = sigmoid(z), about exp(z) for z << 0
        z = np.array([-5.0, -60.0, -68.0, -70.0, -80.0, -95.0, -200.0, -690.0, -800.0, 3.0])
        y = np.zeros(z.size)
    else:
        r = np.array([1.0, -1e-29, 1e-31, -1e-31, 1e-200, -1e-299, 1e-301, -1e-310, 0.0, 2.5])
        y = -r if mode == 0 else np.zeros(r.size)
        z = np.zeros(r.size) if mode == 0 else r.copy()
    m = z.size
    scores, rbuf, lbuf = z.copy(), np.full(m, np.nan, dtype), np.full(m, np.nan, dtype)   # as the workspace
    K._residual_terms(scores, y, None, 0, m, mode, rbuf, lbuf)
    for k in range(m):
        if abs(scores[k]) < floor:
            assert rbuf[k] == 0.0, (k, scores[k])
        else:
            assert rbuf[k] == dtype(scores[k]), (k, scores[k])
    assert np.any((scores != 0) & (np.abs(scores) < floor)) and np.any(np.abs(scores) >= floor)


def reference_counts(dispatcher, *args) -> int:
    """Atomic reference-count operations (numba's ``NRT_incref``/``NRT_decref``) in ``dispatcher``'s own
    compiled code for ``args``: a fresh, uncached compilation, so that its LLVM IR can be read."""
    import numba

    fresh = numba.njit(nogil=True, fastmath=K._FASTMATH, error_model="numpy")(dispatcher.py_func)
    fresh(*args)
    body = fresh.inspect_llvm(fresh.signatures[0]).split("\ndefine ")[1]
    return body.count("@NRT_incref") + body.count("@NRT_decref")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_block_functions_pay_no_reference_counts(dtype):
    """The functions the row loops call once per block (or per eight rows) are leaves numba prunes the
    reference counts of: an atomic increment and decrement per array argument per call cost about 100 ns
    a block before (a call with arrays keeps them, and by the pruning pass's heuristics some loop layouts).
    (The float32 logistic terms, three loops, keep theirs: the row functions pass them borrowed arrays,
    test_row_functions_pay_no_reference_counts.)"""
    X, y, weight, w, b = problem(64, 600, dtype, "logistic", True, seed=8)
    workspace = K.dense_workspace(X, 1, "data")
    z, rbuf, lbuf = workspace.z[0], workspace.rbuf[0], workspace.lbuf[0]
    w = workspace.weights(w)
    for s in (None, weight):
        assert reference_counts(K._logistic_terms_float64, z, y, s, 8, 8, rbuf, z) == 0
        assert reference_counts(K._squared_terms, z, y, s, 8, 8, rbuf, lbuf) == 0
    assert reference_counts(K._gram_terms, z, weight, 8, 8, rbuf, lbuf) == 0
    grad = np.zeros(600)
    vectors = dtype == np.float32          # the workspace's precision "data": explicit vectors (pgd.local.simd)
    sweep = K._dense_scores_accumulate_vectors if vectors else K._dense_scores_accumulate_loops
    accumulate = K._dense_accumulate_vectors if vectors else K._dense_accumulate_loops
    scores = K._dense_scores_vectors if vectors else K._dense_scores_loops
    assert reference_counts(sweep, X, w, b, 8, z, 0, rbuf, 0, grad) == 0
    assert reference_counts(accumulate, X, 0, 8, rbuf, grad, 0, 0) == 0
    assert reference_counts(scores, X, w, b, 0, 8, z, 0, 0) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_row_functions_pay_no_reference_counts(dtype, weighted):
    """The row functions borrow their arrays (``_borrowed``: no reference count), so the views they make and
    the calls they make once per block or per eight rows count nothing (before: 26 counting calls in the
    short-row function, 49 in the long-row one, 36 in the multinomial one, most of them in the block loop)."""
    from pgd.local import cpu_multinomial as M

    for d in (16, K.LONG_ROW_BYTES // np.dtype(dtype).itemsize + 1):
        X, y, weight, w, b = problem(600, d, dtype, "logistic", weighted, seed=9)
        workspace = K.dense_workspace(X, 1, "data")
        rows = K._dense_rows_long if K.long_rows(d, X.itemsize) else K._dense_rows
        assert reference_counts(rows, X, y, weight, workspace.weights(w), b, 1, 0, 600, np.zeros(d),
                                workspace.z[0], workspace.rbuf[0], workspace.lbuf[0]) == 0
    X, data, indices, indptr = to_csr(X[:, :40], np.int32)
    workspace = K.csr_workspace(40, dtype, 1, "data")
    assert reference_counts(K._csr_rows, data, indices.view(np.uint32), indptr, y, weight,
                            workspace.weights(w[:40]), b, 1, 0, 600, np.zeros(40), workspace.z[0],
                            workspace.rbuf[0], workspace.lbuf[0]) == 0
    labels = (y * 2).astype(np.int64)
    kernel = M.FusedMultinomialCPU(X[:, :7], labels, 3, fit_intercept=True, sample_weight=weight, precision="data")
    top, total, picked = kernel._rows[0]
    assert reference_counts(M._multinomial_rows, kernel.X, labels, weight, kernel._WT, kernel._b, 0, 600,
                            kernel._GT[0], kernel._gb[0], kernel._ZT[0], kernel._RT[0], top, total, picked,
                            kernel._bits[0]) == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_threads_work_in_a_forked_child():
    """A child forked after the pool started gets a pool of its own (the parent's threads are gone)."""
    import multiprocessing

    X, y, _, w, b = problem(300, 5, np.float64, "squared", False, seed=6)
    expected = K.dense_loss_grad(X, y, w, b, "squared", threads=2)[0]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(K.dense_loss_grad, (X, y, w, b, "squared"), {"threads": 2}).get(timeout=60)[0]
    assert got == expected


def test_bad_arguments():
    X, y, _, w, b = problem(5, 3, np.float64, "squared", False)
    with pytest.raises(ValueError, match="unknown loss"):
        K.dense_loss_grad(X, y, w, b, "hinge")
    with pytest.raises(ValueError, match="C-contiguous"):
        K.dense_loss_grad(np.asfortranarray(X), y, w, b, "squared")
    with pytest.raises(ValueError, match="y must have"):
        K.dense_loss_grad(X, y.astype(np.float32), w, b, "squared")
    with pytest.raises(ValueError, match="out_grad"):
        K.dense_loss_grad(X, y, w, b, "squared", out_grad=np.empty(3, dtype=np.float32))
    with pytest.raises(ValueError, match="threads"):
        K.Workspace(3, 0)
    with pytest.raises(ValueError, match="precision"):
        K.dense_loss_grad(X, y, w, b, "squared", precision="half")


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(K.DISABLE_ENV, "blocked")
    assert not K.available()
    assert K.DISABLE_ENV in K.unavailable_reason()
    assert K.warm_up() == {"problem": K.unavailable_reason()}


def test_compile_failure_is_a_reason_not_a_crash(monkeypatch):
    def broken(*args):
        raise RuntimeError("Failed in nopython mode pipeline\nmore lines")

    monkeypatch.setattr(K, "_problems", {})
    monkeypatch.setattr(K, "_self_check", broken)
    assert not K.available()
    assert K.unavailable_reason() == ("compiled CPU kernels failed to compile "
                                      "(RuntimeError: Failed in nopython mode pipeline)")


def test_wrong_kernel_is_a_reason(monkeypatch):
    monkeypatch.setattr(K, "_problems", {})
    monkeypatch.setattr(K, "_self_check", lambda kind, *args: f"{kind} squared float32 disagrees with NumPy")
    assert not K.available()
    assert "failed its start-up check" in K.unavailable_reason()


def test_without_numba(monkeypatch):
    """The module imports without numba and says so (a fresh copy of it, numba hidden)."""
    monkeypatch.setitem(sys.modules, "numba", None)
    spec = importlib.util.spec_from_file_location("cpu_kernels_without_numba", K.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.available()
    assert module.unavailable_reason().startswith("numba is not installed")


def test_benchmark_runs_and_writes_its_rows(tmp_path):
    """``python -m pgd.bench.cpu_kernels`` on a tiny problem: every candidate measured, JSON written."""
    import json

    from pgd.bench import cpu_kernels as bench

    out = tmp_path / "bench.json"
    assert bench.main(["--megabytes", "0.05", "--rounds", "1", "--d", "4", "--dtypes", "float32",
                       "--losses", "logistic", "--threads", "1", "--sparse", "60,20,3", "--no-startup",
                       "--passes", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    candidates = {(row["kind"], row["candidate"]) for row in results["rows"]}
    assert candidates == {("dense", "blocked BLAS (pgd.local.linear)"), ("dense", "numba fused (float64)"),
                          ("dense", "numba fused (data)"), ("csr", "scipy two calls"),
                          ("csr", "numba fused (float64), 1 thread"), ("csr", "numba fused (data), 1 thread")}
    assert all(row["ratio"] > 0 and row["floor_ms"] > 0 for row in results["rows"])
    assert {row["precision"] for row in results["passes"]} == {"float64", "data"}


@pytest.mark.parametrize("choice, n_bytes, expect", [
    ("blocked", 1 << 30, "PGD_CPU_KERNEL=blocked"),
    ("auto", 1 << 20, "slab below"),
    ("auto", 1 << 30, ""),
    ("fused", 1 << 10, ""),
])
def test_host_kernel_choice(choice, n_bytes, expect):
    from pgd.local.linear import host_kernel_choice

    reason = host_kernel_choice(n_bytes, np.float64, choice)
    assert (reason == "") if not expect else (expect in reason)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_local_gradient_runs_the_kernel_where_chosen(monkeypatch, dtype, weighted):
    """PGD_CPU_KERNEL=fused puts the compiled kernel behind LocalLinearGradient; it equals the blocked path."""
    X, y, weight, w, b = problem(301, 7, dtype, "logistic", weighted)
    params = np.append(w, b)
    results = {}
    for choice in ("fused", "blocked"):
        monkeypatch.setenv("PGD_CPU_KERNEL", choice)
        local = LocalLinearGradient(X, y, get_loss("logistic"), fit_intercept=True, xp=np, sample_weight=weight)
        assert ("numba" in local.kernel) == (choice == "fused"), local.kernel
        for mode in ("loss", "gram"):
            out = np.full(X.shape[1] + 2, np.nan)
            local.sums_at(params, out, gram=mode == "gram")
            results[choice, mode] = out
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for mode in ("loss", "gram"):
        np.testing.assert_allclose(results["fused", mode], results["blocked", mode], rtol=tol, atol=tol)
