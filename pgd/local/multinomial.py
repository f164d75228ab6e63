"""Multinomial logistic regression (softmax cross-entropy): one rank's local sums.

The model has a coefficient matrix ``W`` (d, K) and K intercepts ``b``.  The optimizers see one flat float64
vector of length ``(d + 1) * K``: the row-major ``(d + 1, K)`` matrix whose first d rows are ``W`` and whose
last row is ``b``, so that feature ``j``'s K coefficients are contiguous (standardisation scales row ``j``)
and the intercepts are the last K entries.

    loss(y_i, z_i) = logsumexp(z_i) - z_{i, y_i},      z_i = x_i W + b  (K raw scores)

Conventions
-----------
- Labels are integers ``0 .. K-1`` held in the data dtype (as the loader delivers ``/y``) and converted once
  to an index array.
- Local results go into a caller-provided float64 vector ``out`` of length ``(d + 1) * K + 1``:
  ``out[:d*K]`` the sum over rows of ``x_i^T r_i`` (row-major (d, K)), ``out[d*K:(d+1)*K]`` the sum of the
  residuals ``r_i = softmax(z_i) - onehot(y_i)`` (0 without intercept) and ``out[-1]`` the (weighted) loss
  sum; ``out`` is overwritten.
- The rows are processed in blocks kept in cache between ``X_b W`` and ``X_b^T R_b`` (about one pass over
  ``X``); buffers are built once, so an evaluation allocates nothing of size ``n_local``.
- Identifiability: softmax scores are invariant to adding one vector to every class column; with an L2
  penalty (λ > 0) the optimum is unique (the coefficient columns sum to zero).  With λ = 0 the optimizer
  returns one of the optima, the one reached from zero (whose columns also sum to zero: every gradient's
  columns do, since the residuals of a row sum to zero).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from pgd.local import kernel_choice
from pgd.local.subnormal import zero_tiny_weights
from pgd.runtime import launcher, settings

__all__ = ["MultinomialLoss", "LocalMultinomialGradient", "SoftmaxResiduals", "gram_weights", "labels_as_indices",
           "softmax_rows"]


def labels_as_indices(y, n_classes: int, xp):
    """Integer class indices from labels stored as floats; raises ValueError outside ``0 .. K-1``."""
    indices = y.astype(xp.int64)
    if y.size and (bool(xp.any(indices != y)) or int(indices.min()) < 0 or int(indices.max()) >= n_classes):
        raise ValueError(f"multinomial labels must be integers 0 .. {n_classes - 1}")
    return indices


def softmax_rows(Z, xp, out=None):
    """Row-wise softmax of scores ``Z`` (m, K), stable for any finite scores (``out`` may be ``Z``)."""
    out = Z.copy() if out is None else out
    if out is not Z:
        out[...] = Z
    out -= out.max(axis=1, keepdims=True)
    xp.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def gram_weights(Z, weight, xp) -> float:
    """Overwrite scores ``Z`` (m, K) with ``S Z``; return ``Σ s_i ||z_i||^2`` (float64 accumulation; the
    power iteration's Gram product, start-up only)."""
    if weight is None:
        return float(xp.einsum("ij,ij->", Z, Z, dtype=xp.float64)) if Z.shape[0] else 0.0
    weighted = Z * weight[:, None]
    total = float(xp.einsum("ij,ij->", weighted, Z, dtype=xp.float64)) if Z.shape[0] else 0.0
    Z[...] = weighted
    return total


class SoftmaxResiduals:
    """Scores to softmax residuals in place, with buffers for up to ``rows`` rows built once.

    Parameters
    ----------
    rows, n_classes : int
        The most rows of one call, and K.
    dtype : dtype
        The scores' dtype.
    xp : module
        Array namespace of the scores.
    """

    def __init__(self, rows: int, n_classes: int, dtype, xp):
        self.xp = xp
        self._row_max = xp.empty((rows, 1), dtype=dtype)
        self._row_sum = xp.empty((rows, 1), dtype=dtype)
        self._flat_index = xp.empty(rows, dtype=xp.int64)
        self._picked = xp.empty(rows, dtype=dtype)
        self._row_offsets = xp.arange(rows, dtype=xp.int64) * n_classes

    def __call__(self, Z, labels, weight) -> float:
        """Overwrite scores ``Z`` (m, K) with ``s_i (softmax(z_i) - onehot(y_i))``; return ``Σ s_i loss_i``
        accumulated in float64 (``labels``: class indices, ``weight``: row weights or None)."""
        xp, m = self.xp, Z.shape[0]
        top, total = self._row_max[:m], self._row_sum[:m]
        flat = self._flat_index[:m]
        picked = self._picked[:m]
        Z.max(axis=1, out=top[:, 0])
        Z -= top
        xp.add(self._row_offsets[:m], labels, out=flat)
        xp.take(Z.reshape(-1), flat, out=picked)          # z_{i, y_i} - max_i
        xp.exp(Z, out=Z)
        Z.sum(axis=1, out=total[:, 0])
        Z /= total
        xp.log(total[:, 0], out=total[:, 0])
        xp.subtract(total[:, 0], picked, out=picked)        # loss_i = log Σ exp(z - max) - (z_y - max)
        Z.reshape(-1)[flat] -= 1.0
        if weight is None:
            return float(picked.sum(dtype=xp.float64))
        Z *= weight[:, None]
        xp.multiply(picked, weight, out=picked)
        return float(picked.sum(dtype=xp.float64))


class MultinomialLoss:
    """Softmax cross-entropy over K classes (the link is the row-wise softmax)."""

    name = "multinomial"
    curvature_bound = 0.5  # Böhning: the Hessian of logsumexp is below (I - 11^T/K)/2 <= I/2

    def link(self, Z, xp):
        """Class probabilities from raw scores ``Z`` (m, K)."""
        return softmax_rows(Z, xp)

    def pointwise(self, y_index, Z, xp):
        """Loss of every row, ``logsumexp(z_i) - z_{i, y_i}``."""
        top = Z.max(axis=1)
        lse = top + xp.log(xp.exp(Z - top[:, None]).sum(axis=1))
        return lse - Z[xp.arange(Z.shape[0]), y_index]

    def __repr__(self) -> str:
        return "MultinomialLoss()"


class LocalMultinomialGradient:
    """Local (one rank's) sums of the multinomial loss and gradient, by row blocks.

    Parameters
    ----------
    X : array, (n_local, d), or scipy.sparse.csr_matrix
        Local feature slab, C-contiguous float32 or float64 (or a rank's CSR rows, on the host: the products
        are SciPy's, blocks sized by their scores); ``n_local`` may be 0.
    y : array, (n_local,)
        Labels ``0 .. K-1`` in the data dtype.
    n_classes : int
        K (at least 2).
    fit_intercept : bool
        Whether the model has intercepts.
    xp : module
        Array namespace of ``X``.
    block_bytes : int, optional
        Target size in bytes of one row block of ``X`` together with its ``(rows, K)`` score block.
    sample_weight : array, (n_local,), optional
        Non-negative row weights in the data dtype.
    host_kernel : {"auto", "fused", "blocked"}, optional
        Dense rows on the host: whether the compiled one-pass kernel
        (:class:`pgd.local.cpu_multinomial.FusedMultinomialCPU`) sums over all rows (or a slice of them);
        default ``PGD_CPU_KERNEL`` (``auto``: slabs of 64 MiB or more with K up to :data:`AUTO_MAX_CLASSES`).
        Mini-batches of gathered rows and the power iteration's Gram products take the blocked path.
    """

    DEFAULT_BLOCK_BYTES = 1 << 20
    loss = MultinomialLoss()

    def __init__(self, X, y, n_classes: int, *, fit_intercept: bool, xp, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 sample_weight=None, host_kernel: str | None = None):
        self.sparse = scipy.sparse.issparse(X)
        if self.sparse:
            X = X.tocsr()
        if X.ndim != 2 or not (self.sparse or X.flags.c_contiguous) or X.dtype not in (xp.float32, xp.float64):
            raise ValueError("X must be a C-contiguous 2-D float32 or float64 array or a CSR matrix")
        if n_classes < 2:
            raise ValueError(f"multinomial needs at least 2 classes, got {n_classes}")
        self.X, self.xp, self.n_classes = X, xp, int(n_classes)
        self.n_local, self.d = X.shape
        self.dtype = X.dtype
        self.fit_intercept = bool(fit_intercept)
        self.labels = labels_as_indices(y, self.n_classes, xp)
        self.sample_weight = sample_weight
        self.kernel = ("SciPy CSR, two products per block (X_b W, X_b^T R_b)" if self.sparse
                       else "blocked two-pass GEMM (X_b W, X_b^T R_b)")
        K = self.n_classes
        row_bytes = max(1, (K if self.sparse else self.d + K) * X.dtype.itemsize)
        self.block_rows = max(1, min(int(block_bytes) // row_bytes, self.n_local))
        rows = self.block_rows if self.n_local else 0
        self._scores = xp.empty((rows, K), dtype=self.dtype)
        self._softmax = SoftmaxResiduals(rows, K, self.dtype, xp)
        self._weights_work = xp.empty((rows, K), dtype=self.dtype) if xp is np else None   # host only
        self._class_sum = xp.empty(K, dtype=self.dtype)
        self._W = xp.empty((self.d, K), dtype=self.dtype)
        self._b = xp.empty(K, dtype=self.dtype)
        self._XtR = xp.empty((self.d, K), dtype=self.dtype)
        self._batch_X = xp.empty((0, 0 if self.sparse else self.d), dtype=self.dtype)   # see _gathered
        self._batch_labels = xp.empty(0, dtype=xp.int64)
        self._batch_weight = xp.empty(0, dtype=self.dtype)
        self._fused = None
        if xp is np and not self.sparse:
            self._fused, why_not = _host_kernel(self, host_kernel or settings.cpu_kernel())
            if why_not:
                self.kernel += f" ({why_not})"

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector, ``(d + 1) * K``."""
        return (self.d + 1) * self.n_classes

    def _blocks(self, rows):
        """``(X_b, labels_b, s_b)`` over all local rows, a slice, or an index array (gathered)."""
        X, labels, weight = self.X, self.labels, self.sample_weight
        if isinstance(rows, slice):
            X, labels = X[rows], labels[rows]
            weight = None if weight is None else weight[rows]
        elif rows is not None:
            X, labels, weight = self._gathered(rows)
        for start in range(0, X.shape[0], self.block_rows):
            stop = min(start + self.block_rows, X.shape[0])
            yield X[start:stop], labels[start:stop], None if weight is None else weight[start:stop]

    def _gathered(self, rows):
        """``(X, labels, weight)`` of the local rows ``rows`` (an index array) in batch buffers that grow to the
        largest batch seen and are then reused (mini-batch steps allocate nothing once warm)."""
        xp, count = self.xp, len(rows)
        if self.sparse:   # SciPy gathers CSR rows into a new matrix (the dense buffers below do not apply)
            weight = None if self.sample_weight is None else self.sample_weight[rows]
            return self.X[rows], self.labels[rows], weight
        if self._batch_X.shape[0] < count:
            self._batch_X = xp.empty((count, self.d), dtype=self.dtype)
            self._batch_labels = xp.empty(count, dtype=xp.int64)
            self._batch_weight = xp.empty(count if self.sample_weight is not None else 0, dtype=self.dtype)
        X, labels = self._batch_X[:count], self._batch_labels[:count]
        xp.take(self.X, rows, axis=0, out=X)
        xp.take(self.labels, rows, out=labels)
        if self.sample_weight is None:
            return X, labels, None
        weight = self._batch_weight[:count]
        xp.take(self.sample_weight, rows, out=weight)
        return X, labels, weight

    def _set_params(self, params) -> None:
        """Cast the flat float64 ``params`` into the data-dtype ``W`` and ``b`` buffers."""
        K, d = self.n_classes, self.d
        if params.shape != (self.n_params,):
            raise ValueError(f"params must have length {(d + 1) * K}, got {params.shape}")
        matrix = params.reshape(d + 1, K)
        self._W[...] = matrix[:d]
        self._b[...] = matrix[d] if self.fit_intercept else 0.0

    def sums_at(self, params, out, *, gram: bool = False, rows=None) -> None:
        """Local (weighted) loss and gradient sums at the flat ``params`` (see the module conventions).

        Parameters
        ----------
        params : array, ((d + 1) * K,), float64
            ``[W (row-major), b]``.
        out : array, ((d + 1) * K + 1,), float64
            Receives the gradient sums and the loss sum.
        gram : bool
            Instead of the loss: the Gram product of the design ``X~ = [X, 1]`` applied to the K columns of
            ``params`` (``X~^T S X~ V`` and ``Σ s ||X~ v_i||^2``), for the power iteration of the step size.
        rows : slice or int array, optional
            Local rows to sum over (mini-batches); all rows when omitted.
        """
        d, K = self.d, self.n_classes
        if self._fused is not None and not gram and (rows is None or (isinstance(rows, slice)
                                                                      and rows.step in (None, 1))):
            self._fused.sums_at(params, out, rows)
            return
        self._set_params(params)
        out[:] = 0
        grad_W = out[: d * K].reshape(d, K)
        grad_b = out[d * K: (d + 1) * K]
        loss_sum = 0.0
        for X_b, labels_b, s_b in self._blocks(rows):
            m = X_b.shape[0]
            Z = self._scores[:m]
            self._product(X_b, self._W, Z)
            Z += self._b
            loss_sum += gram_weights(Z, s_b, self.xp) if gram else self._softmax(Z, labels_b, s_b)
            if self.fit_intercept:
                Z.sum(axis=0, out=self._class_sum)
                grad_b += self._class_sum
            if self._weights_work is not None:   # no subnormals into the BLAS; the intercepts keep them
                zero_tiny_weights(Z, self._weights_work[:m], self.xp)
            self._product(X_b.T, Z, self._XtR)
            grad_W += self._XtR
        out[-1] = loss_sum

    def _product(self, A, B, out) -> None:
        """``out = A @ B`` (dense: BLAS into ``out``; CSR or its transpose: SciPy, copied into ``out``)."""
        if self.sparse:
            out[...] = A @ B
        else:
            self.xp.dot(A, B, out=out)

    def predict_raw(self, params, out) -> None:
        """Raw scores ``X W + b`` into ``out`` (n_local, K)."""
        self._set_params(params)
        self._product(self.X, self._W, out)
        out += self._b


#: ``PGD_CPU_KERNEL=auto`` runs the compiled multinomial kernel up to this many classes: it re-reads each
#: block of rows from cache twice per class, where the blocked path's GEMMs amortise over K
#: (docs/cpu_kernels.md, "Multinomial").
AUTO_MAX_CLASSES = 12


def _host_kernel(local: LocalMultinomialGradient, choice: str):
    """``(kernel or None, why not)`` for a dense host slab under ``PGD_CPU_KERNEL=choice``."""
    reason = kernel_choice.size_choice(local.X.nbytes, choice, kernel_choice.AUTO_MIN_SLAB_BYTES_MULTINOMIAL)
    if not reason and choice == "auto" and local.n_classes > AUTO_MAX_CLASSES:
        reason = f"K = {local.n_classes} above {AUTO_MAX_CLASSES}: the blocked GEMMs are faster"
    if not reason:
        from pgd.local import cpu_multinomial  # noqa: PLC0415 - imports numba (about 0.5 s): only where it may run

        reason = cpu_multinomial.unavailable_reason(local.dtype)
    if reason:
        return None, reason
    fused = cpu_multinomial.FusedMultinomialCPU(
        local.X, local.labels, local.n_classes, fit_intercept=local.fit_intercept, sample_weight=local.sample_weight,
        threads=launcher.blas_thread_count(), precision="data" if local.dtype == np.float32 else "float64")
    local.kernel = fused.kernel + cpu_multinomial.start_up(local.dtype)
    return fused, ""
