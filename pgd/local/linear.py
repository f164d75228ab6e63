"""The local linear model of one rank: its loss, gradient and Gram products over the rows it holds, in one pass.

Conventions are those of :mod:`pgd.local.losses` (``xp`` passed in, local sums into a float64 ``out`` of
length ``d + 2``).  On CuPy the fused one-pass kernel of :mod:`pgd.device.kernels` is used when it passes
its start-up :func:`self_check` on this slab; on the host the compiled one-pass kernel of
:mod:`pgd.local.cpu_kernels` where it pays (:func:`host_kernel_choice`); otherwise the blocked two-pass
computation runs.
"""

from __future__ import annotations

import math

import numpy as np

from pgd.device.backend import is_cupy
from pgd.device.kernels import MAX_READS_OF_X, SELF_CHECK_TOLERANCE, FusedGradient
from pgd.local.kernel_choice import size_choice
from pgd.local.losses import get_loss, sum64
from pgd.local.subnormal import zero_tiny_weights
from pgd.runtime import launcher, settings

__all__ = ["LocalLinearGradient", "self_check"]


class LocalLinearGradient:
    """Local (one rank's) sums of the linear model's loss, gradient and Gram products.

    The rows are processed in blocks whose slice of ``X`` is about ``block_bytes``, so that the second
    product with a block (``X_b^T r_b``) reads it from cache.  Block views and buffers are built once;
    the methods allocate nothing of size ``n_local`` or ``block_rows``.

    Parameters
    ----------
    X : array, (n_local, d)
        Local feature slab, C-contiguous float32 or float64; ``n_local`` may be 0.
    y : array, (n_local,)
        Local targets, same dtype as ``X``.
    loss : SquaredLoss or LogisticLoss
        Pointwise loss.
    fit_intercept : bool
        Whether the model has an intercept ``b``.
    xp : module
        Array namespace of ``X`` and ``y``.
    block_bytes : int, optional
        Target size of one row block of ``X`` in bytes (at least one row).  On a GPU pass something at
        least as large as ``X`` so that the slab is one block.
    sample_weight : array, (n_local,), optional
        Non-negative row weights in the data dtype (None: every row weighs 1).
    host_kernel : {"auto", "fused", "blocked"}, optional
        On the host, whether the compiled one-pass kernel runs (default: ``PGD_CPU_KERNEL``, else ``auto``).

    Attributes
    ----------
    n_local, d : int
        Shape of ``X``.
    dtype : dtype
        Data dtype.
    block_rows : int
        Rows per block (the last block may be shorter).
    """

    DEFAULT_BLOCK_BYTES = 1 << 20

    def __init__(self, X, y, loss, *, fit_intercept: bool, xp, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 sample_weight=None, host_kernel: str | None = None):
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}")
        if X.dtype not in (xp.float32, xp.float64):
            raise TypeError(f"X must be float32 or float64, got {X.dtype}")
        if not X.flags.c_contiguous:
            raise ValueError("X must be C-contiguous")
        if y.shape != (X.shape[0],) or y.dtype != X.dtype:
            raise ValueError(f"y must have shape ({X.shape[0]},) and dtype {X.dtype}, got {y.shape} {y.dtype}")
        if sample_weight is not None and (sample_weight.shape != y.shape or sample_weight.dtype != X.dtype):
            raise ValueError(f"sample_weight must have shape {y.shape} and dtype {X.dtype}")
        self.X, self.y, self.loss, self.xp = X, y, loss, xp
        self._on_gpu = is_cupy(xp)
        self.sample_weight = sample_weight
        self.fit_intercept = bool(fit_intercept)
        self.n_local, self.d = X.shape
        self.dtype = X.dtype
        row_bytes = max(1, self.d * X.itemsize)
        self.block_rows = max(1, min(int(block_bytes) // row_bytes, self.n_local))
        buffer_rows = self.block_rows if self.n_local else 0
        self._z = xp.empty(buffer_rows, dtype=self.dtype)
        self._work = xp.empty(buffer_rows, dtype=self.dtype)
        self._row_sum = xp.empty(self.d, dtype=self.dtype)
        self._batch_X = xp.empty((0, self.d), dtype=self.dtype)
        self._batch_y = xp.empty(0, dtype=self.dtype)
        self._batch_s = xp.empty(0, dtype=self.dtype)
        self._blocks = self._block_views(X, y, sample_weight)   # all rows: views, built once
        self._params_w = xp.empty(self.d, dtype=self.dtype)   # w of a [w, b] vector, in the data dtype
        # the one-pass GPU kernel (None on the host, or when it failed its start-up check) and what runs
        if not self._on_gpu:
            self._fused, self.kernel = _host_kernel(X, y, sample_weight, self.fit_intercept,
                                                    host_kernel or settings.cpu_kernel())
        elif sample_weight is not None:
            self._fused, self.kernel = None, "two-pass CuPy/cuBLAS (sample weights: the fused kernel has none)"
        else:
            self._fused, self.kernel = _fused_kernel(X, y, xp, self.fit_intercept, loss.name)

    def _block_views(self, X, y, weight) -> list:
        """``(X_b, y_b, s_b, z_b, work_b)`` for the row blocks of ``X`` (``s_b`` None without weights)."""
        blocks = []
        for start in range(0, X.shape[0], self.block_rows):
            stop = min(start + self.block_rows, X.shape[0])
            blocks.append((X[start:stop], y[start:stop], None if weight is None else weight[start:stop],
                           self._z[: stop - start], self._work[: stop - start]))
        return blocks

    def _check_coefficients(self, w) -> None:
        if w.shape != (self.d,) or w.dtype != self.dtype:
            raise ValueError(f"w must have shape ({self.d},) and dtype {self.dtype}, got {w.shape} {w.dtype}")

    def _row_blocks(self, rows):
        """Blocks ``(X_b, y_b, s_b, z_b, work_b)`` covering ``rows``: all rows, a slice, or an index array.

        An index array is gathered into batch buffers that grow to the largest batch seen and are then
        reused (mini-batch methods); a slice is served by views.
        """
        if rows is None:
            return self._blocks
        weight = self.sample_weight
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.n_local)
            X, y = self.X[start:stop], self.y[start:stop]
            weight = None if weight is None else weight[start:stop]
        else:
            count = len(rows)
            if self._batch_X.shape[0] < count:
                self._batch_X = self.xp.empty((count, self.d), dtype=self.dtype)
                self._batch_y = self.xp.empty(count, dtype=self.dtype)
                self._batch_s = self.xp.empty(count if weight is not None else 0, dtype=self.dtype)
            X, y = self._batch_X[:count], self._batch_y[:count]
            self.xp.take(self.X, rows, axis=0, out=X)
            self.xp.take(self.y, rows, out=y)
            if weight is not None:
                self.xp.take(weight, rows, out=self._batch_s[:count])
                weight = self._batch_s[:count]
        return self._block_views(X, y, weight)

    def _sweep(self, w, offset: float, transform, out, rows=None) -> None:
        """One blocked pass: ``z_b = X_b w + offset``, ``r_b = transform(...)``, sums of ``X_b^T r_b``.

        ``transform(y_b, z_b, work_b, s_b)`` overwrites ``z_b`` with ``r_b`` (weights applied) and returns a
        scalar that is summed into ``out[d + 1]``; ``out[:d] = sum_b X_b^T r_b`` and ``out[d] = sum r``
        (with intercept) or 0.
        """
        self._check_coefficients(w)
        xp, d = self.xp, self.d
        out[:] = 0
        gradient = out[:d]
        scalar_sum = 0.0
        residual_sum = 0.0
        for X_b, y_b, s_b, z_b, work_b in self._row_blocks(rows):
            xp.dot(X_b, w, out=z_b)
            if offset != 0.0:
                xp.add(z_b, offset, out=z_b)
            scalar_sum += transform(y_b, z_b, work_b, s_b)
            if self.fit_intercept:
                residual_sum += sum64(z_b, xp)
            if not self._on_gpu:
                zero_tiny_weights(z_b, work_b, xp)       # no subnormals into the BLAS (x86: 18x slower)
            xp.dot(z_b, X_b, out=self._row_sum)
            xp.add(gradient, self._row_sum, out=gradient)
        out[d] = residual_sum
        out[d + 1] = scalar_sum

    def loss_gradient(self, w, b: float, out, rows=None) -> None:
        """Local (weighted) loss and gradient sums at ``(w, b)``, over all local rows or only ``rows``.

        Parameters
        ----------
        w : array, (d,)
            Weights in the data dtype.
        b : float
            Intercept (ignored without intercept).
        out : array, (d + 2,), float64
            Receives ``sum_i s_i loss'_i x_i``, ``sum_i s_i loss'_i`` (0 without intercept),
            ``sum_i s_i loss_i``.
        rows : slice or int array, optional
            Local rows to sum over (mini-batches); all rows when omitted.
        """
        if self._fused is not None and (rows is None or isinstance(rows, slice)):
            self._check_coefficients(w)
            return self._fused(self._as_params(w, b), self.loss.name, out, rows)
        offset = float(b) if self.fit_intercept else 0.0
        xp, loss = self.xp, self.loss
        self._sweep(w, offset, lambda y_b, z_b, work_b, s_b: loss.sum_and_derivative(y_b, z_b, work_b, xp, s_b),
                    out, rows)

    def gram_matvec(self, v, vb: float, out) -> None:
        """Local (weighted) Gram product of the design ``X~ = [X, 1]`` (or ``X`` without intercept).

        With ``u = X v + vb`` (``vb`` ignored without intercept) and row weights ``s``:
        ``out[:d] = X^T (s u)``, ``out[d] = sum s u`` (0 without intercept),
        ``out[d + 1] = sum s u^2 = ||S^(1/2) X~ [v; vb]||^2``.

        Parameters
        ----------
        v : array, (d,)
            Direction in the data dtype.
        vb : float
            Intercept component of the direction.
        out : array, (d + 2,), float64
            Receives the result.
        """
        if self._fused is not None:
            self._check_coefficients(v)
            return self._fused(self._as_params(v, vb), "gram", out)
        offset = float(vb) if self.fit_intercept else 0.0
        self._sweep(v, offset, self._gram_transform, out)

    def _gram_transform(self, y_b, z_b, work_b, s_b) -> float:
        """``z_b <- s_b u_b``; returns ``sum s_b u_b^2`` (float64 accumulation)."""
        xp = self.xp
        if s_b is None:
            xp.multiply(z_b, z_b, out=work_b)
            return sum64(work_b, xp)
        xp.multiply(z_b, s_b, out=work_b)
        xp.multiply(z_b, work_b, out=z_b)
        total = sum64(z_b, xp)
        z_b[...] = work_b
        return total

    def sums_at(self, params, out, *, gram: bool = False, rows=None) -> None:
        """Local sums at a float64 parameter vector ``params = [w, b]`` (length d + 1, the optimizers'
        layout): :meth:`loss_gradient` over ``rows``, or :meth:`gram_matvec` with ``gram``.

        On the GPU the fused kernel reads ``params`` where it lies: no copy of ``w`` and no host
        synchronisation for ``b``.  Elsewhere ``w`` is cast into a reused buffer of the data dtype.
        """
        if self._fused is not None and (gram or rows is None or isinstance(rows, slice)):
            return self._fused(params, "gram" if gram else self.loss.name, out, None if gram else rows)
        self._params_w[...] = params[: self.d]
        if gram:
            return self.gram_matvec(self._params_w, float(params[self.d]), out)
        return self.loss_gradient(self._params_w, float(params[self.d]), out, rows)

    def _as_params(self, w, b: float):
        """``[w, b]`` as a new float64 vector (the fused kernel's input) for the ``(w, b)`` entry points."""
        params = self.xp.empty(self.d + 1, dtype=self.xp.float64)
        params[: self.d] = w
        params[self.d] = float(b) if self.fit_intercept else 0.0
        return params

    def predict_raw(self, w, b: float, out) -> None:
        """Write the raw predictions ``X w + b`` into ``out`` (``(n_local,)``, data dtype)."""
        self._check_coefficients(w)
        self.xp.dot(self.X, w, out=out)
        if self.fit_intercept and float(b) != 0.0:
            self.xp.add(out, float(b), out=out)


def host_kernel_choice(n_bytes: int, dtype, choice: str) -> str:
    """Why the blocked path runs on the host, or ``""`` when the compiled kernel should be tried.

    Parameters
    ----------
    n_bytes : int
        The slab's size in bytes.
    dtype : dtype
        Data dtype.
    choice : {"auto", "fused", "blocked"}
        ``PGD_CPU_KERNEL``.
    """
    reason = size_choice(n_bytes, choice)
    if reason:
        return reason
    from pgd.local import cpu_kernels  # noqa: PLC0415 - imports numba (about 0.5 s): only where it may run

    return cpu_kernels.unavailable_reason("dense", dtype)


def _host_kernel(X, y, sample_weight, fit_intercept: bool, choice: str):
    """The compiled one-pass CPU kernel for this slab, or None; and a description of what will run."""
    reason = host_kernel_choice(X.nbytes, X.dtype, choice)
    if reason:
        return None, f"blocked two-pass (NumPy/BLAS; {reason})"
    return compiled_cpu_kernel(X, y, X.dtype, "dense", fit_intercept=fit_intercept, sample_weight=sample_weight)


def compiled_cpu_kernel(slab, y, dtype, kind: str, *, fit_intercept: bool, sample_weight):
    """``(kernel, description)``: :class:`pgd.local.cpu_kernels.FusedCPUGradient` on a rank's dense rows or CSR
    arrays ``(data, indices, indptr, d)`` (``kind``), with the rank's BLAS threads; float32 products inside a
    row in float32 as BLAS and SciPy do; the description says what its start-up cost this process."""
    from pgd.local.cpu_kernels import FusedCPUGradient  # noqa: PLC0415 - loaded by the caller's choice

    precision = "data" if dtype == np.float32 else "float64"
    fused = FusedCPUGradient(slab, y, fit_intercept=fit_intercept, sample_weight=sample_weight,
                             threads=launcher.blas_thread_count(), precision=precision)
    return fused, fused.kernel + _kernel_start_up(kind, dtype)


def _kernel_start_up(kind: str, dtype) -> str:
    """``"; compiled in 7 s (cached on disk for later runs)"`` or ``"; loaded from its disk cache in 0.8 s"``: what
    the compiled kernel cost this process (the run summary shows it beside the kernel)."""
    from pgd.local import cpu_kernels  # noqa: PLC0415 - already loaded by the caller

    return cpu_kernels.describe_start_up(cpu_kernels.warm_up(kind, dtype).get(f"{kind}/{np.dtype(dtype).name}"))


def _fused_kernel(X, y, xp, fit_intercept: bool, loss: str):
    """The fused one-pass kernel (:mod:`pgd.device.kernels`) when it passes its start-up check on this slab
    (``xp`` is CuPy), else None; and a description of the gradient computation that will run."""
    fused = FusedGradient(xp, X, y, fit_intercept=fit_intercept)
    reads = fused.plan().tiles
    if reads > MAX_READS_OF_X:
        return None, f"two-pass CuPy/cuBLAS (for d = {X.shape[1]} the fused kernel would read X {reads} times)"
    problem = self_check(fused, (loss, "gram"))
    if problem:
        return None, f"two-pass CuPy/cuBLAS ({problem}; fused kernel not used)"
    return fused, "fused one-pass kernel"


def self_check(fused: FusedGradient, losses=("squared",), sample_rows: int = 4096) -> str | None:
    """Compare the fused kernel with a float64 two-pass CuPy computation on the slab's first rows.

    Run once at start-up for every loss the run will evaluate, with the very kernel variant the run
    launches. Returns None when they agree, else a one-line description of the disagreement (then the
    caller falls back to the two-pass path rather than train on wrong gradients).
    """
    cupy, d = fused.cupy, fused.d
    rows = min(fused.n, sample_rows)
    if rows == 0:
        return None
    rng = np.random.default_rng(12345)
    params = cupy.asarray(rng.standard_normal(d + 1) / math.sqrt(d))
    X = fused.X[:rows].astype(cupy.float64)
    y = fused.y[:rows].astype(cupy.float64)
    w = params[:d].astype(fused.dtype).astype(cupy.float64)       # the kernel casts w to the data type
    offset = float(params[d].astype(fused.dtype)) if fused.fit_intercept else 0.0
    got = cupy.empty(d + 2, dtype=cupy.float64)
    for loss in losses:
        try:
            fused(params, loss, got, rows=slice(0, rows))
        except Exception as error:   # NVRTC missing or failing, launch errors: fall back, say why
            first_line = (str(error).strip().splitlines() or [""])[0][:160]
            return f"the fused {loss} kernel could not run ({type(error).__name__}: {first_line})"
        z = X @ w + offset
        if loss == "gram":
            scalar = float(z @ z)
        else:
            scalar = get_loss(loss).sum_and_derivative(y, z, cupy.empty_like(z), cupy)
        expected = cupy.concatenate([X.T @ z, cupy.asarray([float(z.sum()) if fused.fit_intercept else 0.0,
                                                             scalar])])
        scale = cupy.abs(expected) + float(cupy.linalg.norm(expected[:d])) + 1.0
        error = float(cupy.max(cupy.abs(got - expected) / scale))
        if not error <= SELF_CHECK_TOLERANCE[fused.dtype]:
            return (f"the fused {loss} kernel differs from the two-pass result by {error:.2e} (relative) on "
                    f"this GPU")
    return None
