"""The local linear model on a rank's sparse (CSR) rows: loss, gradient and Gram products, nothing densified.

Same interface and conventions as :class:`pgd.local.linear.LocalLinearGradient` (local sums into a float64
``out`` of length ``d + 2``; ``sums_at``, ``loss_gradient``, ``gram_matvec``, ``predict_raw``, ``kernel``).
Two computations, chosen once per slab and named in :attr:`SparseLinearGradient.kernel` (the run summary's
``gradient_kernel``):

- the compiled one-pass kernel of :mod:`pgd.local.cpu_kernels` (numba) where it pays and passes its
  start-up check (``PGD_CPU_KERNEL``: ``auto`` from 256 MiB of CSR arrays, ``fused`` always, ``blocked``
  never; see :func:`csr_kernel_choice`): one pass over the non-zeros per evaluation (score, loss
  derivative, scatter), on the rank's BLAS threads;
- otherwise SciPy's two sparse products, ``z = X w`` then ``g = Xᵀ r``, called through SciPy's compiled
  ``csr_matvec`` / ``csc_matvec`` into buffers made once (no allocation per evaluation).

Mini-batches given as an index array (``--optimizer sgd``) gather their rows into a new CSR matrix per batch
(SciPy row indexing); contiguous slices are served without copies.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.sparse import _sparsetools

from pgd.local.kernel_choice import size_choice
from pgd.local.linear import LocalLinearGradient, compiled_cpu_kernel
from pgd.local.subnormal import zero_tiny_weights
from pgd.runtime import settings

__all__ = ["SparseLinearGradient", "is_sparse", "local_gradient", "row_blocks", "row_range"]


def is_sparse(X) -> bool:
    """Whether ``X`` is a SciPy sparse matrix (a rank's rows of a CSR file)."""
    return scipy.sparse.issparse(X)


def local_gradient(X, y, loss, *, fit_intercept: bool, xp, block_bytes: int = LocalLinearGradient.DEFAULT_BLOCK_BYTES,
                   sample_weight=None):
    """The local gradient for a rank's rows: :class:`SparseLinearGradient` for a CSR matrix,
    :class:`pgd.local.linear.LocalLinearGradient` for a dense array (same arguments)."""
    if is_sparse(X):
        return SparseLinearGradient(X, y, loss, fit_intercept=fit_intercept, xp=xp, sample_weight=sample_weight)
    return LocalLinearGradient(X, y, loss, fit_intercept=fit_intercept, xp=xp, block_bytes=block_bytes,
                               sample_weight=sample_weight)


#: What runs without the compiled kernel (named in the run summary's ``gradient_kernel``).
SCIPY_PATH = "SciPy CSR, two calls per evaluation (X w, then Xᵀ r)"


def csr_kernel_choice(n_bytes: int, dtype, choice: str) -> str:
    """Why SciPy's two calls run on this CSR slab, or ``""`` when the compiled kernel should be tried.

    Parameters
    ----------
    n_bytes : int
        Bytes of the slab's CSR arrays.
    dtype : dtype
        Value dtype.
    choice : {"auto", "fused", "blocked"}
        ``PGD_CPU_KERNEL`` (``blocked`` means SciPy here).
    """
    reason = size_choice(n_bytes, choice)
    if reason:
        return reason
    from pgd.local import cpu_kernels  # noqa: PLC0415 - imports numba (about 0.5 s): only where it may run

    return cpu_kernels.unavailable_reason("csr", dtype)


def _compiled_kernel(X, y, fit_intercept: bool, sample_weight):
    """``(kernel or None, description)``: the compiled one-pass CSR kernel when :func:`csr_kernel_choice`
    allows it, else None and why SciPy's two calls run instead."""
    nbytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    reason = csr_kernel_choice(nbytes, X.dtype, settings.cpu_kernel())
    if reason:
        return None, f"{SCIPY_PATH}; {reason}"
    return compiled_cpu_kernel((X.data, X.indices, X.indptr, X.shape[1]), y, X.dtype, "csr",
                               fit_intercept=fit_intercept, sample_weight=sample_weight)


def row_range(X, start: int, stop: int):
    """Rows ``[start, stop)`` of a CSR matrix (SciPy copies the values of a range much smaller than the
    matrix: use it on bounded blocks)."""
    lo, hi = int(X.indptr[start]), int(X.indptr[stop])
    return scipy.sparse.csr_matrix((X.data[lo:hi], X.indices[lo:hi], X.indptr[start:stop + 1] - lo),
                                   shape=(stop - start, X.shape[1]), copy=False)


def row_blocks(X, max_nnz: int = 1 << 20):
    """``(start, stop)`` row ranges of a CSR matrix with about ``max_nnz`` stored values each (at least one
    row each), for start-up passes whose temporaries must stay bounded."""
    n = X.shape[0]
    start = 0
    while start < n:
        target = int(X.indptr[start]) + max_nnz
        stop = max(start + 1, min(n, int(np.searchsorted(X.indptr, target, side="right")) - 1))
        yield start, stop
        start = stop


class SparseLinearGradient(LocalLinearGradient):
    """Local sums of the linear model over a rank's CSR rows (see the module docstring).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, (n_local, d)
        Float32 or float64 values, sorted or unsorted indices; ``n_local`` may be 0.
    y, loss, fit_intercept, xp, sample_weight
        As for :class:`pgd.local.linear.LocalLinearGradient` (``xp`` must be NumPy).
    compiled : bool
        Use the compiled one-pass kernel when available (False: always SciPy's two calls).
    """

    sparse = True

    def __init__(self, X, y, loss, *, fit_intercept: bool, xp=np, sample_weight=None, compiled: bool = True):
        if not is_sparse(X) or X.format != "csr":
            raise TypeError(f"X must be a scipy.sparse CSR matrix, got {type(X).__name__}")
        if X.dtype not in (np.float32, np.float64):
            raise TypeError(f"X must hold float32 or float64 values, got {X.dtype}")
        if xp is not np:
            raise TypeError("sparse rows are computed on the host (NumPy)")
        if y.shape != (X.shape[0],) or y.dtype != X.dtype:
            raise ValueError(f"y must have shape ({X.shape[0]},) and dtype {X.dtype}, got {y.shape} {y.dtype}")
        if sample_weight is not None and (sample_weight.shape != y.shape or sample_weight.dtype != X.dtype):
            raise ValueError(f"sample_weight must have shape {y.shape} and dtype {X.dtype}")
        self.X, self.y, self.loss, self.xp = X, y, loss, np
        self.sample_weight = sample_weight
        self.fit_intercept = bool(fit_intercept)
        self.n_local, self.d = X.shape
        self.dtype = X.dtype
        self.block_rows = max(1, self.n_local)   # one block: the whole slab (its rows are never densified)
        self._z = np.empty(self.n_local, dtype=self.dtype)
        self._work = np.empty(self.n_local, dtype=self.dtype)
        self._gradient = np.empty(self.d, dtype=self.dtype)
        self._params_w = np.empty(self.d, dtype=self.dtype)
        self._fused, self.kernel = (_compiled_kernel(X, y, self.fit_intercept, sample_weight) if compiled
                                    else (None, SCIPY_PATH))

    def _rows(self, rows):
        """``(indptr, indices, data, y, s, z, work)`` of ``rows``: all rows, a slice (views of the stored
        arrays and a rebased row pointer), or an index array (gathered by SciPy)."""
        X, y, s = self.X, self.y, self.sample_weight
        indptr, indices, data = X.indptr, X.indices, X.data
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.n_local)
            stop = max(start, stop)
            lo, hi = int(indptr[start]), int(indptr[stop])
            indptr, indices, data = indptr[start:stop + 1] - indptr.dtype.type(lo), indices[lo:hi], data[lo:hi]
            y, s = y[start:stop], None if s is None else s[start:stop]
        elif rows is not None:
            batch = X[rows]
            indptr, indices, data = batch.indptr, batch.indices, batch.data
            y, s = y[rows], None if s is None else s[rows]
        count = len(indptr) - 1
        return indptr, indices, data, y, s, self._z[:count], self._work[:count]

    def _sweep(self, w, offset: float, transform, out, rows=None) -> None:
        """``z = X w + offset``, ``r = transform(y, z, work, s)``, ``out[:d] = Xᵀ r``, ``out[d] = Σ r``
        (with intercept), ``out[d + 1]`` the transform's scalar: SciPy's two compiled products."""
        self._check_coefficients(w)
        indptr, indices, data, y, s, z, work = self._rows(rows)
        m, d = len(indptr) - 1, self.d
        z[...] = offset
        self._gradient[...] = 0
        scalar = residual_sum = 0.0
        if m:
            _sparsetools.csr_matvec(m, d, indptr, indices, data, w, z)
            scalar = float(transform(y, z, work, s))
            residual_sum = float(z.sum(dtype=np.float64)) if self.fit_intercept else 0.0
            zero_tiny_weights(z, work, np)            # no subnormals into the product (x86: an assist each)
            _sparsetools.csc_matvec(d, m, indptr, indices, data, z, self._gradient)
        out[: self.d] = self._gradient
        out[self.d] = residual_sum
        out[self.d + 1] = scalar

    def predict_raw(self, w, b: float, out) -> None:
        """Write the raw predictions ``X w + b`` into ``out`` (``(n_local,)``, data dtype)."""
        self._check_coefficients(w)
        out[...] = float(b) if self.fit_intercept else 0.0
        if self.n_local:
            _sparsetools.csr_matvec(self.n_local, self.d, self.X.indptr, self.X.indices, self.X.data, w, out)
