"""Compiled one-pass CPU kernels (numba) for one rank's loss and gradient sums: dense rows and CSR.

One read of the data per evaluation: for each row ``i`` the kernel forms ``z_i = x_i . w + b``, the
pointwise loss and its derivative ``r_i``, and adds ``s_i r_i x_i`` to the gradient while the row is still
in registers/L1 (dense), or in the same pass over the row's non-zeros (CSR).  The conventions are those of
:mod:`pgd.losses`: losses ``squared`` (``(z - y)^2 / 2``, ``r = z - y``) and ``logistic`` (labels in
{0, 1}, ``max(z, 0) - y z + log1p(exp(-|z|))``, ``r = sigmoid(z) - y``, never overflowing), plus ``gram``
(``r = z``, scalar ``z^2``: the Gram product ``X~^T X~ v`` of the power iteration).

Numerics
--------
- The data is read in its own dtype (float32 or float64, never converted or copied); ``w`` and ``b`` are
  used as given (pass the optimizer's float64 ``w``), and every product, the dot product, the loss and
  all accumulators (gradient, intercept, loss and weight sums) are float64.
- Threads: rows are split into ``threads`` contiguous chunks (dense: equal rows; CSR: equal non-zeros,
  a pure function of ``indptr``).  Chunk ``t`` accumulates into its own float64 partial vector and the
  partials are added in chunk order, so a result is bit-for-bit reproducible for a given thread count and
  agrees to rounding across thread counts.  Chunks run on Python threads calling the compiled kernel
  with the GIL released (no numba threading layer, no global ``numba.set_num_threads`` state, nothing that
  competes with the BLAS's own threads); the calling thread runs chunk 0.  Memory: ``(threads - 1) * d``
  float64 partial vectors (dense and CSR alike: 8 MB per extra thread at d = 10^6), allocated once in a
  :class:`Workspace`.
- Standardisation does not reach the kernels: it is an O(d) transform of ``(w, b)`` and of the gradient
  around the objective (:mod:`pgd.strategies.standardize`).

Availability and fall-back
--------------------------
numba is imported with this module (import it lazily from the caller); kernels compile on first use and
are cached on disk (``cache=True``; numba's cache directory, or ``NUMBA_CACHE_DIR``).  :func:`available`
says whether they can be used and :func:`unavailable_reason` says why not (numba missing, or a kernel that
failed to compile or failed its start-up check), so the caller takes today's blocked NumPy/BLAS path and
names the reason in the run summary.  :func:`warm_up` compiles (or loads) the kernels a run needs and
reports the seconds and whether the disk cache was hit.

API
---
- :func:`dense_loss_grad` and :func:`csr_loss_grad`: one evaluation into caller-provided buffers.
- :class:`FusedCPUGradient`: bound to one rank's slab, with the call convention of the GPU kernel
  (:class:`pgd.gpu_kernels.FusedGradient`): ``kernel(params, mode, out, rows=None)`` with
  ``params = [w, b]`` float64 and ``out`` the ``(d + 2,)`` float64 layout of :mod:`pgd.losses`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numba is optional: without it the caller keeps the blocked NumPy/BLAS path
    import numba
except ImportError as exc:  # pragma: no cover - exercised by the fall-back test through a flag
    numba = None
    _IMPORT_PROBLEM = f"numba is not installed ({exc})"
else:
    _IMPORT_PROBLEM = ""

__all__ = [
    "LOSS_CODES",
    "available",
    "unavailable_reason",
    "warm_up",
    "Workspace",
    "dense_loss_grad",
    "csr_loss_grad",
    "csr_chunk_bounds",
    "dense_chunk_bounds",
    "FusedCPUGradient",
]

#: Loss codes the kernels understand (``gram``: ``r = z``, scalar ``z^2``).
LOSS_CODES = {"squared": 0, "logistic": 1, "gram": 2}
#: Setting this environment variable to a non-empty value other than ``0`` disables the kernels (the
#: caller falls back), e.g. to compare the two paths or to work around a broken numba install.
DISABLE_ENV = "PGD_CPU_KERNELS_OFF"

# Reassociation lets LLVM vectorise the dot product; no 'nnan'/'ninf' (inf and NaN must propagate).
_FASTMATH = {"reassoc", "contract"}


def _jit(function=None, *, fastmath=_FASTMATH):
    """``numba.njit`` with the kernels' options (cached on disk, GIL released), or the function itself
    when numba is missing (it is then never called: :func:`available` is False)."""
    if function is None:
        return lambda f: _jit(f, fastmath=fastmath)
    if numba is None:
        return function
    return numba.njit(cache=True, nogil=True, fastmath=fastmath, error_model="numpy")(function)


@_jit
def _pointwise(z, y, mode):
    """``(r, loss)`` of one row: derivative and loss of ``squared`` (0), ``logistic`` (1) or ``gram`` (2).

    The logistic branch is written with selects, not jumps (the sign of ``z`` is unpredictable)."""
    if mode == 0:
        r = z - y
        return r, 0.5 * r * r
    if mode == 1:
        e = math.exp(-abs(z))
        positive = z >= 0.0
        numerator = 1.0 if positive else e
        step = 1.0 if positive else 0.0
        return numerator / (1.0 + e) - y, z * (step - y) + math.log1p(e)
    return z, z * z


@_jit
def _row_terms(z, y, weight, i, mode):
    """``(s r, s loss, s)`` of row ``i`` with raw score ``z`` (``s = 1`` when ``weight`` is None)."""
    r, loss = _pointwise(z, np.float64(y[i]), mode)
    if weight is None:
        return r, loss, 1.0
    s = np.float64(weight[i])
    return r * s, loss * s, s


@_jit
def _dense_rows(X, y, weight, w, b, mode, lo, hi, grad):
    """Sums over rows ``lo:hi`` of dense ``X`` into ``grad`` (overwritten, float64); returns
    ``(loss_sum, intercept_sum, weight_sum)``.  ``weight`` may be None (every row weighs 1).

    Rows go four at a time: four dot products in one sweep of ``w``, then one sweep that adds the four
    rows into ``grad`` (one load and store of ``grad`` per four rows), all while the rows are in L1."""
    d = X.shape[1]
    for j in range(d):
        grad[j] = 0.0
    loss_sum = 0.0
    residual_sum = 0.0
    weight_sum = 0.0
    i = lo
    while i + 4 <= hi:
        z0 = z1 = z2 = z3 = 0.0
        for j in range(d):
            wj = w[j]
            z0 += X[i, j] * wj
            z1 += X[i + 1, j] * wj
            z2 += X[i + 2, j] * wj
            z3 += X[i + 3, j] * wj
        r0, l0, s0 = _row_terms(z0 + b, y, weight, i, mode)
        r1, l1, s1 = _row_terms(z1 + b, y, weight, i + 1, mode)
        r2, l2, s2 = _row_terms(z2 + b, y, weight, i + 2, mode)
        r3, l3, s3 = _row_terms(z3 + b, y, weight, i + 3, mode)
        loss_sum += (l0 + l1) + (l2 + l3)
        residual_sum += (r0 + r1) + (r2 + r3)
        weight_sum += (s0 + s1) + (s2 + s3)
        for j in range(d):
            grad[j] += (r0 * X[i, j] + r1 * X[i + 1, j]) + (r2 * X[i + 2, j] + r3 * X[i + 3, j])
        i += 4
    while i < hi:
        z = 0.0
        for j in range(d):
            z += X[i, j] * w[j]
        r, loss, s = _row_terms(z + b, y, weight, i, mode)
        loss_sum += loss
        residual_sum += r
        weight_sum += s
        for j in range(d):
            grad[j] += r * X[i, j]
        i += 1
    return loss_sum, residual_sum, weight_sum


@_jit(fastmath=False)   # reassociation would vectorise the dot into AVX-512 gathers: 3x slower on Zen 4
def _csr_rows(data, indices, indptr, y, weight, w, b, mode, lo, hi, grad):
    """Sums over CSR rows ``lo:hi`` into ``grad`` (overwritten, float64, length ``d``); returns
    ``(loss_sum, intercept_sum, weight_sum)``.  ``weight`` may be None.  ``indices`` are unsigned
    (a view of the validated signed indices), so no negative-index wrap-around check is compiled in."""
    for j in range(grad.shape[0]):
        grad[j] = 0.0
    loss_sum = 0.0
    residual_sum = 0.0
    weight_sum = 0.0
    for i in range(lo, hi):
        start = indptr[i]
        stop = indptr[i + 1]
        z = 0.0
        for k in range(start, stop):
            z += data[k] * w[indices[k]]
        r, loss, s = _row_terms(z + b, y, weight, i, mode)
        weight_sum += s
        loss_sum += loss
        residual_sum += r
        for k in range(start, stop):
            grad[indices[k]] += r * data[k]
    return loss_sum, residual_sum, weight_sum


# ---------------------------------------------------------------------------------------------------
# availability, compilation, cache


_state_lock = threading.Lock()
_problem: str | None = None        # None: not checked yet; "": usable; else the reason it is not
_warm_report: dict = {}


def _env_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def available() -> bool:
    """Whether the compiled kernels can be used (numba present, kernels compiled and self-checked).

    The first call compiles (or loads from the disk cache) the float64 and float32 dense kernels and
    checks them against NumPy on a small problem; later calls are free.
    """
    return unavailable_reason() == ""


def unavailable_reason() -> str:
    """Empty when :func:`available`; otherwise one line saying why the kernels are not used."""
    global _problem
    if _env_disabled():
        return f"compiled CPU kernels disabled by {DISABLE_ENV}"
    with _state_lock:
        if _problem is None:
            _problem = _IMPORT_PROBLEM or _compile_and_check()
        return _problem


def _dispatchers() -> dict:
    return {"dense": _dense_rows, "csr": _csr_rows}


def _cache_hits(dispatcher) -> int:
    stats = getattr(dispatcher, "stats", None)
    return sum(getattr(stats, "cache_hits", {}).values()) if stats is not None else 0


def _compile_and_check() -> str:
    """Compile (or load) the common specialisations, record the time, check them; '' when all is well."""
    try:
        rng = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            X = rng.standard_normal((7, 3)).astype(dtype)
            y = (rng.random(7) < 0.5).astype(dtype)
            w = rng.standard_normal(3)
            for kind in ("dense", "csr"):
                before = time.perf_counter()
                hits = _cache_hits(_dispatchers()[kind])
                problem = _self_check(kind, X, y, w)
                seconds = time.perf_counter() - before
                _warm_report[f"{kind}/{np.dtype(dtype).name}"] = {
                    "seconds": seconds, "cache_hit": _cache_hits(_dispatchers()[kind]) > hits}
                if problem:
                    return f"compiled CPU kernel failed its start-up check ({problem})"
    except Exception as exc:  # noqa: BLE001 - any compile failure means: fall back, and say why
        return f"compiled CPU kernels failed to compile ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return ""


def _self_check(kind: str, X, y, w) -> str:
    """Compare one evaluation per loss with NumPy in float64; '' or what disagreed."""
    X64, y64, b = X.astype(np.float64), y.astype(np.float64), 0.25
    grad = np.empty(X.shape[1])
    for loss, code in LOSS_CODES.items():
        if kind == "dense":
            loss_sum, r_sum, _ = _dense_rows(X, y, None, w, b, code, 0, X.shape[0], grad)
        else:
            indptr = np.arange(0, X.size + 1, X.shape[1], dtype=np.int64)
            indices = np.tile(np.arange(X.shape[1], dtype=np.uint32), X.shape[0])
            loss_sum, r_sum, _ = _csr_rows(X.ravel(), indices, indptr, y, None, w, b, code, 0, X.shape[0], grad)
        z = X64 @ w + b
        if loss == "squared":
            r, pointwise = z - y64, 0.5 * (z - y64) ** 2
        elif loss == "logistic":
            r, pointwise = 1 / (1 + np.exp(-z)) - y64, np.logaddexp(0, z) - y64 * z
        else:
            r, pointwise = z, z * z
        if not (np.allclose(grad, X64.T @ r, rtol=1e-6, atol=1e-6)
                and math.isclose(r_sum, r.sum(), rel_tol=1e-6, abs_tol=1e-6)
                and math.isclose(loss_sum, pointwise.sum(), rel_tol=1e-6, abs_tol=1e-6)):
            return f"{kind} {loss} {X.dtype} disagrees with NumPy"
    return ""


def warm_up() -> dict:
    """Compile (or load from the disk cache) the kernels and report, per ``"kind/dtype"``, the seconds
    it took and whether the disk cache was hit; ``{"problem": reason}`` when they are unavailable.

    The seconds of a cache hit are the load time; a miss includes compiling (count it in start-up)."""
    problem = unavailable_reason()
    if problem:
        return {"problem": problem}
    return dict(_warm_report)


# ---------------------------------------------------------------------------------------------------
# threads and buffers


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads (grown, never shrunk)."""
    global _pool, _pool_size
    with _state_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pgd-kernel")
            _pool_size = workers
        return _pool


class Workspace:
    """Preallocated per-chunk buffers for ``threads`` chunks of a ``d``-column problem (allocate once,
    pass to every call): ``(threads - 1) * d`` float64 partial gradients and the per-chunk scalars.

    Parameters
    ----------
    d : int
        Number of features.
    threads : int
        Chunks (and threads) the rows are split into; at least 1.
    """

    def __init__(self, d: int, threads: int = 1):
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.d, self.threads = int(d), int(threads)
        self.partials = np.empty((self.threads - 1, self.d), dtype=np.float64)
        self.scalars = np.empty((self.threads, 3), dtype=np.float64)

    def fits(self, d: int, threads: int) -> bool:
        """Whether this workspace serves a ``d``-column call with ``threads`` chunks."""
        return self.d == d and self.threads == threads


def dense_chunk_bounds(n: int, chunks: int) -> np.ndarray:
    """Row boundaries ``b[t] = n t // chunks`` (``chunks + 1`` values): equal contiguous row ranges."""
    return np.array([n * t // chunks for t in range(chunks + 1)], dtype=np.int64)


def csr_chunk_bounds(indptr, chunks: int) -> np.ndarray:
    """Row boundaries of ``chunks`` contiguous row ranges with balanced non-zeros (a pure function of
    ``indptr``): chunk ``t`` ends at the first row whose ``indptr`` reaches ``nnz (t + 1) / chunks``."""
    indptr = np.asarray(indptr)
    n = indptr.shape[0] - 1
    first, nnz = int(indptr[0]), int(indptr[-1] - indptr[0])
    targets = [first + (nnz * t + chunks - 1) // chunks for t in range(1, chunks)]
    inner = np.searchsorted(indptr, targets, side="left").clip(0, n) if chunks > 1 else []
    bounds = np.concatenate(([0], inner, [n])).astype(np.int64)
    return np.maximum.accumulate(bounds)


def _run_chunks(call, bounds, out_grad, workspace) -> tuple[float, float, float]:
    """Run ``call(lo, hi, grad)`` for every chunk (chunk 0 on this thread into ``out_grad``, the others on
    the pool into ``workspace.partials``), then add the partials and scalars in chunk order."""
    chunks = len(bounds) - 1
    scalars = workspace.scalars
    if chunks == 1:
        scalars[0] = call(bounds[0], bounds[1], out_grad)
    else:
        def job(t):
            scalars[t] = call(bounds[t], bounds[t + 1], workspace.partials[t - 1])

        futures = [_executor(chunks - 1).submit(job, t) for t in range(1, chunks)]
        scalars[0] = call(bounds[0], bounds[1], out_grad)
        for future in futures:
            future.result()
        for t in range(chunks - 1):
            np.add(out_grad, workspace.partials[t], out=out_grad)
    loss_sum = intercept_sum = weight_sum = 0.0
    for t in range(chunks):
        loss_sum += scalars[t, 0]
        intercept_sum += scalars[t, 1]
        weight_sum += scalars[t, 2]
    return loss_sum, intercept_sum, weight_sum


def _loss_code(loss: str) -> int:
    try:
        return LOSS_CODES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; choose from {sorted(LOSS_CODES)}") from None


def _check_vectors(n: int, d: int, dtype, y, w, sample_weight, out_grad) -> None:
    if y.shape != (n,) or y.dtype != dtype:
        raise ValueError(f"y must have shape ({n},) and dtype {dtype}, got {y.shape} {y.dtype}")
    if sample_weight is not None and (sample_weight.shape != (n,) or sample_weight.dtype != dtype):
        raise ValueError(f"sample_weight must have shape ({n},) and dtype {dtype}")
    if w.shape != (d,) or w.dtype not in (np.float32, np.float64):
        raise ValueError(f"w must be a float vector of shape ({d},), got {w.shape} {w.dtype}")
    if out_grad.shape != (d,) or out_grad.dtype != np.float64 or not out_grad.flags.c_contiguous:
        raise ValueError(f"out_grad must be a contiguous float64 vector of shape ({d},)")


def _prepare(d: int, threads: int, out_grad, workspace):
    out_grad = np.empty(d, dtype=np.float64) if out_grad is None else out_grad
    if workspace is None or not workspace.fits(d, threads):
        workspace = Workspace(d, threads)
    return out_grad, workspace


def dense_loss_grad(X, y, w, b: float, loss: str, *, sample_weight=None, out_grad=None, threads: int = 1,
                    workspace: Workspace | None = None, bounds=None):
    """Local sums of the loss and gradient over the rows of a dense ``X``, in one read of ``X``.

    Parameters
    ----------
    X : ndarray, (n, d)
        C-contiguous float32 or float64 (read as it is); ``n`` may be 0.
    y : ndarray, (n,)
        Targets (logistic: labels in {0, 1}), dtype of ``X``; ignored by ``gram``.
    w : ndarray, (d,)
        Weights, float64 (or float32); used as given.
    b : float
        Intercept (pass 0.0 without one).
    loss : {"squared", "logistic", "gram"}
    sample_weight : ndarray, (n,), optional
        Non-negative row weights, dtype of ``X``.
    out_grad : ndarray, (d,), float64, optional
        Receives ``sum_i s_i r_i x_i`` (overwritten); allocated when omitted.
    threads : int
        Chunks of rows, each on its own thread (1: this thread only).
    workspace : Workspace, optional
        Buffers for ``threads`` chunks; pass one (allocated once) to make calls allocation-free.
    bounds : ndarray, optional
        Chunk boundaries (:func:`dense_chunk_bounds`); computed when omitted.

    Returns
    -------
    (float, ndarray, float, float)
        ``sum_i s_i loss_i``, ``out_grad``, ``sum_i s_i r_i`` (intercept component), ``sum_i s_i``.
    """
    if X.ndim != 2 or X.dtype not in (np.float32, np.float64) or not X.flags.c_contiguous:
        raise ValueError(f"X must be a C-contiguous 2-D float32/float64 array, got {X.shape} {X.dtype}")
    n, d = X.shape
    out_grad, workspace = _prepare(d, threads, out_grad, workspace)
    _check_vectors(n, d, X.dtype, y, w, sample_weight, out_grad)
    code, b = _loss_code(loss), float(b)
    bounds = dense_chunk_bounds(n, workspace.threads) if bounds is None else bounds
    loss_sum, intercept_sum, weight_sum = _run_chunks(
        lambda lo, hi, grad: _dense_rows(X, y, sample_weight, w, b, code, lo, hi, grad),
        bounds, out_grad, workspace)
    return loss_sum, out_grad, intercept_sum, weight_sum


def csr_loss_grad(data, indices, indptr, y, w, b: float, loss: str, *, sample_weight=None, out_grad=None,
                  threads: int = 1, workspace: Workspace | None = None, bounds=None):
    """Local sums of the loss and gradient over the rows of a CSR matrix, in one pass over its non-zeros.

    Parameters
    ----------
    data, indices, indptr : ndarray
        CSR arrays: ``data`` float32 or float64, ``indices`` int32 or int64 (< ``len(w)``, unchecked
        here: validate when loading), ``indptr`` int32 or int64 of length ``n + 1`` (it may start above
        0, as a rank's slice of a larger ``indptr`` does).
    y, w, b, loss, sample_weight, out_grad, threads, workspace
        As in :func:`dense_loss_grad`; ``d = len(w)``.
    bounds : ndarray, optional
        Chunk boundaries (:func:`csr_chunk_bounds`); computed when omitted.

    Returns
    -------
    (float, ndarray, float, float)
        As :func:`dense_loss_grad`.
    """
    if data.dtype not in (np.float32, np.float64) or indices.dtype not in (np.int32, np.int64):
        raise ValueError(f"CSR data must be float32/float64 and indices int32/int64, got {data.dtype}, "
                         f"{indices.dtype}")
    if indptr.ndim != 1 or indptr.shape[0] < 1 or indptr.dtype not in (np.int32, np.int64):
        raise ValueError("indptr must be a non-empty int32/int64 vector")
    n, d = indptr.shape[0] - 1, w.shape[0]
    out_grad, workspace = _prepare(d, threads, out_grad, workspace)
    _check_vectors(n, d, data.dtype, y, w, sample_weight, out_grad)
    code, b = _loss_code(loss), float(b)
    bounds = csr_chunk_bounds(indptr, workspace.threads) if bounds is None else bounds
    unsigned = indices.view(np.uint32 if indices.dtype == np.int32 else np.uint64)
    loss_sum, intercept_sum, weight_sum = _run_chunks(
        lambda lo, hi, grad: _csr_rows(data, unsigned, indptr, y, sample_weight, w, b, code, lo, hi, grad),
        bounds, out_grad, workspace)
    return loss_sum, out_grad, intercept_sum, weight_sum


class FusedCPUGradient:
    """One rank's slab bound to the compiled kernel, with the call convention of the GPU's fused kernel
    (:class:`pgd.gpu_kernels.FusedGradient`), so the local gradient can hold either.

    Buffers (the per-thread partial gradients) and chunk boundaries are made once here; a call allocates
    nothing of size ``n`` or ``d``.

    Parameters
    ----------
    X : ndarray (n, d) C-contiguous, or a tuple ``(data, indices, indptr, d)`` for CSR
        The rank's rows, float32 or float64.
    y : ndarray, (n,)
        Targets in the data dtype.
    fit_intercept : bool
        Whether ``params[d]`` is added to every score and ``out[d]`` receives the residual sum.
    sample_weight : ndarray, (n,), optional
        Row weights in the data dtype.
    threads : int
        Threads (row chunks) per call; take it from ``PGD_BLAS_THREADS`` / the affinity as for BLAS.

    Attributes
    ----------
    kernel : str
        What runs, for the run summary (e.g. ``"fused one-pass CPU kernel (numba, 2 threads)"``).
    weight_sum : float
        ``sum_i s_i`` over all rows (``n`` without weights), from the last call over all rows.
    """

    def __init__(self, X, y, *, fit_intercept: bool, sample_weight=None, threads: int = 1):
        self.sparse = isinstance(X, tuple)
        if self.sparse:
            data, indices, indptr, d = X
            self.X, self.n, self.d = (data, indices, indptr), indptr.shape[0] - 1, int(d)
        else:
            self.X, (self.n, self.d) = X, X.shape
        self.y, self.sample_weight = y, sample_weight
        self.fit_intercept = bool(fit_intercept)
        self.threads = max(1, int(threads))
        self.workspace = Workspace(self.d, self.threads)
        self._all_bounds = self._bounds(0, self.n)
        self.weight_sum = float("nan")
        form = "CSR" if self.sparse else "dense"
        plural = "s" if self.threads > 1 else ""
        self.kernel = f"fused one-pass CPU kernel (numba, {form}, {self.threads} thread{plural})"

    def _bounds(self, start: int, stop: int):
        if self.sparse:
            return start + csr_chunk_bounds(self.X[2][start:stop + 1], self.threads)
        return start + dense_chunk_bounds(stop - start, self.threads)

    def __call__(self, params, loss: str, out, rows: slice | None = None) -> None:
        """Overwrite ``out`` (float64, ``d + 2``: gradient sum, residual sum or 0, loss sum) with the sums
        over ``rows`` (all rows by default) at ``params = [w, b]`` (float64, length ``d + 1``)."""
        d = self.d
        start, stop = (0, self.n) if rows is None else rows.indices(self.n)[:2]
        stop = max(start, stop)
        bounds = self._all_bounds if (start, stop) == (0, self.n) else self._bounds(start, stop)
        w, b = params[:d], float(params[d]) if self.fit_intercept else 0.0
        common = dict(sample_weight=self.sample_weight, out_grad=out[:d], threads=self.threads,
                      workspace=self.workspace, bounds=bounds)
        if self.sparse:
            data, indices, indptr = self.X
            loss_sum, _, intercept_sum, weight_sum = csr_loss_grad(data, indices, indptr, self.y, w, b, loss,
                                                                   **common)
        else:
            loss_sum, _, intercept_sum, weight_sum = dense_loss_grad(self.X, self.y, w, b, loss, **common)
        out[d] = intercept_sum if self.fit_intercept else 0.0
        out[d + 1] = loss_sum
        if rows is None:
            self.weight_sum = weight_sum
