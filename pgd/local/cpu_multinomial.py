"""Compiled one-pass CPU kernel (numba) for one rank's multinomial loss and gradient sums over dense rows.

Built from the binary kernel's passes (:mod:`pgd.local.cpu_kernels`): rows go in blocks that fit in L1; for
each class ``c`` the block's scores ``z_c = X_b w_c + b_c`` (:func:`~pgd.local.cpu_kernels._dense_scores`),
then the block's softmax residuals ``s (softmax(z) - onehot(y))`` and losses (one vectorised loop per class,
``exp`` a polynomial: :func:`~pgd.local.cpu_kernels._exp_minus`), then for each class the block's rows added
into that class's gradient row while still in cache (:func:`~pgd.local.cpu_kernels._dense_accumulate`, which
also prefetches the next block).  ``X`` is read from memory once per evaluation; the block is re-read from
L1 ``2 K`` times, so the kernel pays for small K (measured in docs/cpu_kernels.md) and the blocked GEMM path
keeps large K.

Conventions are those of :class:`pgd.local.multinomial.LocalMultinomialGradient`: flat parameters
``[W (d, K) row-major, b (K)]`` in float64, and ``out`` of length ``(d + 1) K + 1`` (gradient sums, intercept
sums or 0, loss sum).  Numerics as the binary kernel: with ``precision="data"`` (float32 data) a row's scores
and the combination of four rows are float32; every sum over rows, the softmax and the loss are float64.
Threads: contiguous row chunks, each into its own float64 partials, added in chunk order (reproducible for
a thread count, equal to rounding across counts).  The row function borrows its arrays
(:func:`~pgd.local.cpu_kernels._borrowed`), so its per-class views (``WT[c]``, ``ZT[c]``, ...) and the calls
it makes per block and class count no references.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from pgd.local import cpu_kernels as K
from pgd.local.cpu_kernels import (
    _EXP_ARGUMENT_MAX,
    _bits_as_float,
    _borrowed,
    _dense_accumulate,
    _dense_scores,
    _exp_bits,
    _exp_minus,
    _jit,
    _prefetch_spread,
    _row_weight,
    _weight_floor,
)

__all__ = ["FusedMultinomialCPU", "unavailable_reason", "start_up"]


@_jit
def _softmax_block(ZT, labels, weight, start, m, top, total, picked, bits):
    """Scores ``ZT[c, k]`` (float64, rows ``start + k``) to ``s_k (softmax - onehot)``; returns the block's
    ``(Σ s loss, Σ s)``.  ``top``, ``total``, ``picked`` (float64) and ``bits`` (int64) are scratch."""
    n_classes = ZT.shape[0]
    for k in range(m):
        top[k] = ZT[0, k]
    for c in range(1, n_classes):
        row = ZT[c]
        for k in range(m):
            top[k] = max(top[k], row[k])
    for k in range(m):
        picked[k] = ZT[labels[start + k], k] - top[k]        # z_y - max
        total[k] = 0.0
    for c in range(n_classes):
        row = ZT[c]
        for k in range(m):
            bits[k] = _exp_bits(min(top[k] - row[k], _EXP_ARGUMENT_MAX))
        for k in range(m):
            row[k] = _exp_minus(min(top[k] - row[k], _EXP_ARGUMENT_MAX), _bits_as_float(bits[k]))
        for k in range(m):
            total[k] += row[k]
    loss_sum = 0.0
    weight_sum = 0.0
    for k in range(m):
        s = 1.0 if weight is None else np.float64(weight[start + k])
        loss_sum += s * (math.log(total[k]) - picked[k])
        weight_sum += s
        total[k] = s / total[k]
    for c in range(n_classes):
        row = ZT[c]
        for k in range(m):
            row[k] *= total[k]
    for k in range(m):
        ZT[labels[start + k], k] -= 1.0 if weight is None else np.float64(weight[start + k])
    return loss_sum, weight_sum


@_jit
def _multinomial_rows(X, labels, weight, WT, b, lo, hi, GT, gb, ZT, RT, top, total, picked, bits):
    """Sums over rows ``lo:hi`` into ``GT`` (K, d) and ``gb`` (K,) (both overwritten, float64); returns
    ``(Σ s loss, Σ s)``.  ``WT`` (K, d) holds the class weight vectors in the product dtype; ``ZT`` (K, block)
    float64 and ``RT`` (K, block) in the product dtype are scratch."""
    n_classes, d = WT.shape
    block = ZT.shape[1]
    X, labels, weight, WT, b, GT, gb = (_borrowed(X), _borrowed(labels), _borrowed(weight), _borrowed(WT),
                                        _borrowed(b), _borrowed(GT), _borrowed(gb))
    ZT, RT, top, total, picked, bits = (_borrowed(ZT), _borrowed(RT), _borrowed(top), _borrowed(total),
                                        _borrowed(picked), _borrowed(bits))
    for c in range(n_classes):
        gb[c] = 0.0
        for j in range(d):
            GT[c, j] = 0.0
    loss_sum = 0.0
    weight_sum = 0.0
    for start in range(lo, hi, block):
        m = min(block, hi - start)
        ahead_lo, middle, ahead_hi = _prefetch_spread(X, start + m, hi, block)
        for c in range(n_classes):                      # the first class's passes prefetch the next block
            first, last = (ahead_lo, middle) if c == 0 else (0, 0)
            _dense_scores(X, WT[c], b[c], start, m, ZT[c], first, last)
        sums = _softmax_block(ZT, labels, weight, start, m, top, total, picked, bits)
        loss_sum += sums[0]
        weight_sum += sums[1]
        for c in range(n_classes):
            residual, weights = ZT[c], RT[c]
            floor = _weight_floor(weights)
            for k in range(m):
                weights[k] = _row_weight(residual[k], floor)
            class_sum = 0.0
            for k in range(m):
                class_sum += residual[k]
            gb[c] += class_sum
            first, last = (middle, ahead_hi) if c == 0 else (0, 0)
            _dense_accumulate(X, start, m, weights, GT[c], first, last)
    return loss_sum, weight_sum


_state_lock = threading.Lock()
_problems: dict = {}
_start_up: dict = {}


def unavailable_reason(dtype) -> str:
    """Empty when the multinomial kernel can run on ``dtype`` data; otherwise one line saying why not (the
    binary kernels' reason, or this kernel failing to compile or its start-up check against NumPy).  The
    first call for a dtype compiles the kernel (or loads it from numba's disk cache) and checks it."""
    name = np.dtype(dtype).name
    with _state_lock:
        if name not in _problems:
            started, hits = time.perf_counter(), K._cache_hits(_multinomial_rows)
            _problems[name] = (K.unavailable_reason("dense", dtype)
                               or _compile_and_check(np.dtype(dtype)))
            _start_up[name] = {"seconds": time.perf_counter() - started,
                               "cache_hit": K._cache_hits(_multinomial_rows) > hits}
    return _problems[name]


def start_up(dtype) -> str:
    """What loading the kernel cost this process, for the run summary
    (:func:`pgd.local.cpu_kernels.describe_start_up`; '' before :func:`unavailable_reason`)."""
    return K.describe_start_up(_start_up.get(np.dtype(dtype).name))


def _compile_and_check(dtype) -> str:
    try:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((11, 3)).astype(dtype)
        labels = np.array([0, 1, 2, 0, 1, 2, 2, 2, 1, 0, 1], dtype=np.int64)
        params = rng.standard_normal(4 * 3)
        X64, W, b = X.astype(np.float64), params[:9].reshape(3, 3), params[9:]
        Z = X64 @ W + b
        P = np.exp(Z - Z.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        loss = float(np.sum(np.log(np.exp(Z).sum(axis=1)) - Z[np.arange(11), labels]))
        P[np.arange(11), labels] -= 1.0
        expected = np.concatenate([(X64.T @ P).ravel(), P.sum(axis=0), [loss]])
        for precision in K.PRECISIONS:
            out = np.empty(expected.size)
            FusedMultinomialCPU(X, labels, 3, fit_intercept=True, precision=precision).sums_at(params, out)
            if not np.allclose(out, expected, rtol=1e-5, atol=1e-5):
                return f"compiled multinomial CPU kernel failed its start-up check ({dtype}, precision {precision})"
    except Exception as exc:  # noqa: BLE001 - any compile failure means: fall back, and say why
        return f"compiled multinomial CPU kernel failed to compile ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return ""


class FusedMultinomialCPU:
    """One rank's dense rows bound to the compiled multinomial kernel; buffers and chunk boundaries made
    once, so an evaluation allocates nothing of size ``n`` or ``d K``.

    Parameters
    ----------
    X : ndarray (n, d), C-contiguous float32 or float64
    labels : ndarray (n,), int64
        Class indices ``0 .. K-1`` (validated by the caller).
    n_classes : int
    fit_intercept : bool
    sample_weight : ndarray (n,), optional
        Row weights in the data dtype.
    threads : int
        Row chunks, each on its own thread.
    precision : {"float64", "data"}
        As :data:`pgd.local.cpu_kernels.PRECISIONS`.
    """

    def __init__(self, X, labels, n_classes: int, *, fit_intercept: bool, sample_weight=None, threads: int = 1,
                 precision: str = "float64"):
        self.X, self.labels, self.sample_weight = X, labels, sample_weight
        self.n, self.d = X.shape
        self.n_classes, self.fit_intercept = int(n_classes), bool(fit_intercept)
        self.threads = max(1, int(threads))
        combine = K._combine_dtype(precision, X.dtype)
        block = K.dense_block_rows(self.d, X.itemsize, K.DENSE_BLOCK_BYTES)   # re-read 2 K times: keep it in L1
        chunks, classes = self.threads, self.n_classes
        self._WT = np.empty((classes, self.d), dtype=combine)
        self._b = np.empty(classes)
        self._GT = np.empty((chunks, classes, self.d))
        self._gb = np.empty((chunks, classes))
        self._scalars = np.empty((chunks, 2))
        self._ZT = np.empty((chunks, classes, block))
        self._RT = np.empty((chunks, classes, block), dtype=combine)
        self._rows = np.empty((chunks, 3, block))            # top, total, picked
        self._bits = np.empty((chunks, block), dtype=np.int64)
        self._all_bounds = K.dense_chunk_bounds(self.n, self.threads)
        plural = "s" if self.threads > 1 else ""
        self.kernel = f"fused one-pass CPU kernel (numba, dense, {classes} classes, {self.threads} thread{plural})"

    def _chunk(self, lo: int, hi: int, t: int) -> None:
        top, total, picked = self._rows[t]
        self._scalars[t] = _multinomial_rows(self.X, self.labels, self.sample_weight, self._WT, self._b, lo, hi,
                                             self._GT[t], self._gb[t], self._ZT[t], self._RT[t], top, total,
                                             picked, self._bits[t])

    def sums_at(self, params, out, rows: slice | None = None) -> None:
        """Overwrite ``out`` (float64, ``(d + 1) K + 1``) with the sums over ``rows`` (all by default) at the
        flat float64 ``params`` (the layout of :class:`pgd.local.multinomial.LocalMultinomialGradient`)."""
        d, classes = self.d, self.n_classes
        matrix = params.reshape(d + 1, classes)
        self._WT[...] = matrix[:d].T
        self._b[...] = matrix[d] if self.fit_intercept else 0.0
        if rows is None:
            bounds = self._all_bounds
        else:
            start, stop = rows.indices(self.n)[:2]
            bounds = start + K.dense_chunk_bounds(max(start, stop) - start, self.threads)
        K.run_chunks(self._chunk, bounds)
        for t in range(1, self.threads):       # partials in chunk order
            self._GT[0] += self._GT[t]
            self._gb[0] += self._gb[t]
        out[: d * classes].reshape(d, classes)[...] = self._GT[0].T
        out[d * classes: (d + 1) * classes] = self._gb[0] if self.fit_intercept else 0.0
        out[-1] = float(self._scalars[:, 0].sum())
