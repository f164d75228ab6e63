"""Standardisation inside the objective: the optimizers work in standardised coordinates, the data stays as it is.

With column means ``μ`` and scales ``σ`` (from one distributed pass at start-up), the standardised model
``z = Σ_j (x_j − μ_j)/σ_j · v_j + c`` is the original model ``z = x·w + b`` with

    w = v / σ,      b = c − μ·w                     (p = A p̃,  p̃ = [v, c],  p = [w, b])

so the objective in standardised coordinates is ``f̃(p̃) = f(A p̃)`` and its gradient ``Aᵀ ∇f(A p̃)``:
``g̃_v = g_w / σ − (μ/σ) g_b``, ``g̃_c = g_b``.  Both maps cost O(d) per evaluation: ``X`` is never copied,
centred or densified, and the objective's one pass over the data is unchanged.

A multinomial model's parameters are the row-major ``(d + 1, K)`` matrix ``[W; b]``: row ``j`` of ``W`` is
divided by ``σ_j`` (``W = V / σ``), the intercept row is ``b = c − μᵀW``, and the gradient maps are the same
with outer products (``G̃_V = G_W / σ − (μ/σ) g_bᵀ``); penalty factors are repeated for the K classes.

Conventions
-----------
- Scales: with an intercept ``μ`` is the (weighted) column mean and ``σ`` the population standard
  deviation; without one ``μ = 0`` and ``σ`` is the root mean square (centring needs an intercept to
  absorb it).  Constant columns keep ``σ = 1`` (their standardised column is zero with an intercept).
  With an L2 penalty on the original coefficients the scale becomes ``sqrt(σ² + λ/c)`` (see
  :func:`scaling_for`).
- Penalties: by default the objective is the one the README states, penalties on the original ``w``
  (``penalty_scale="original"``): in standardised coordinates the L2 penalty is ``(λ/2)Σ (v_j/σ_j)²`` and the
  L1 penalty ``α Σ |v_j|/σ_j`` (a weighted soft threshold).  ``penalty_scale="standardized"`` penalises
  ``v`` itself (glmnet's and Spark MLlib's convention), which changes the optimum.
- Moments are accumulated in float64 on shifted data (the first row of the dataset, sent to every rank,
  is the shift) and summed over ranks, so they depend on the rank count only through rounding.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI
from scipy.sparse import _sparsetools

from pgd.device.backend import host_copy_of
from pgd.local.power import curvature_bound
from pgd.local.sparse import is_sparse, row_blocks, row_range

#: A column whose standard deviation is below this fraction of its magnitude is treated as constant.
CONSTANT_RELATIVE = 1e-10

PENALTY_SCALES = ("original", "standardized")


def _first_rows_root(mpi_comm, n_local: int) -> int:
    """The lowest rank of ``mpi_comm`` that holds rows (the holder of the first row in a block partition),
    or -1 when no rank does."""
    holder = np.array([mpi_comm.Get_rank() if n_local else mpi_comm.Get_size()], dtype=np.int64)
    mpi_comm.Allreduce(MPI.IN_PLACE, holder, op=MPI.MIN)
    return int(holder[0]) if holder[0] < mpi_comm.Get_size() else -1


def column_moments(mpi_comm, X, weight, xp, block_rows: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Global ``(Σ s, mean, Σ s (x − mean)²)`` of every column of the row-partitioned ``X`` (collective).

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        The ranks whose rows together make the dataset (for a column block: the ranks sharing it).
    X : array, (n_local, d)
        This rank's rows (float32 or float64, host or device); may have no rows.
    weight : array, (n_local,), or None
        Sample weights.
    xp : module
        Array namespace of ``X``.
    block_rows : int
        Rows cast to float64 at a time.

    Returns
    -------
    (float, ndarray, ndarray)
        Host float64 values, identical on every rank.
    """
    if is_sparse(X):
        return csr_column_moments(mpi_comm, X, weight)
    n_local, d = X.shape
    root = _first_rows_root(mpi_comm, n_local)
    shift = np.zeros(d)
    if root >= 0:
        if mpi_comm.Get_rank() == root:
            shift[:] = _to_host(xp, X[0]).astype(np.float64)
        mpi_comm.Bcast(shift, root=root)
    sums = np.zeros(2 * d + 1)
    if n_local:
        device_shift = xp.asarray(shift)
        first = xp.zeros(d, dtype=xp.float64)
        second = xp.zeros(d, dtype=xp.float64)
        total = 0.0
        for start in range(0, n_local, max(1, block_rows)):
            block = X[start:start + block_rows].astype(xp.float64) - device_shift
            if weight is None:
                first += block.sum(axis=0)
                block *= block
                second += block.sum(axis=0)
                total += block.shape[0]
            else:
                s = weight[start:start + block_rows].astype(xp.float64)
                first += s @ block
                block *= block
                second += s @ block
                total += float(s.sum())
        sums[0] = total
        sums[1:d + 1] = _to_host(xp, first)
        sums[d + 1:] = _to_host(xp, second)
    mpi_comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    total, first, second = float(sums[0]), sums[1:d + 1], sums[d + 1:]
    if total <= 0:
        return total, np.zeros(d), np.zeros(d)
    mean = shift + first / total
    m2 = np.maximum(second - first * first / total, 0.0)
    return total, mean, m2


def _csr_column_sums(X, weight, center=None) -> tuple[float, np.ndarray, np.ndarray]:
    """``(Σ s, Σ s x, Σ s (x − center)²)`` per column over a CSR matrix's rows, float64, by SciPy's compiled
    ``Xᵀ s`` (``csc_matvec``) on blocks of about a million stored values (their deviations are the only
    temporaries); the implicit zeros add ``(Σ s − Σ_stored s) center²`` without being formed."""
    d = X.shape[1]
    first, second, stored_weight = np.zeros(d), np.zeros(d), np.zeros(d)
    total = 0.0
    canonical = X.has_canonical_format   # sorted indices without repeats (checked once, O(nnz))
    for start, stop in row_blocks(X):
        lo, hi = int(X.indptr[start]), int(X.indptr[stop])
        m = stop - start
        s = np.ones(m) if weight is None else weight[start:stop].astype(np.float64)
        # summed one row after the other, as csc_matvec sums a column's stored weights below: a column stored
        # in every row then gets exactly Σ s − Σ_stored s = 0 (a rounding residue times center² would not be)
        total = float(np.add.accumulate(np.concatenate(([total], s)))[-1]) if m else total
        if canonical:
            indptr, columns = X.indptr[start:stop + 1] - X.indptr.dtype.type(lo), X.indices[lo:hi]
            values = X.data[lo:hi].astype(np.float64)
        else:   # a column repeated within a row: its entry is the sum, as in the gradient (a copy of the block)
            block = row_range(X, start, stop).astype(np.float64)
            block.sum_duplicates()
            indptr, columns, values = block.indptr, block.indices, block.data
        _sparsetools.csc_matvec(d, m, indptr, columns, values, s, first)
        if center is not None:
            values -= center[columns]
            values *= values
            _sparsetools.csc_matvec(d, m, indptr, columns, values, s, second)
            values[...] = 1.0
            _sparsetools.csc_matvec(d, m, indptr, columns, values, s, stored_weight)
    if center is not None:
        second += (total - stored_weight) * center * center
    return total, first, second


def csr_column_moments(mpi_comm, X, weight) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`column_moments` of a rank's CSR rows without densifying: the global weighted means (one
    Allreduce), then ``Σ s (x − mean)²`` about them, every term non-negative (a second pass and Allreduce),
    so nothing cancels and the rank count changes only the rounding of sums."""
    d = X.shape[1]
    sums = np.zeros(d + 1)
    sums[0], sums[1:], _ = _csr_column_sums(X, weight)
    mpi_comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    total = float(sums[0])
    if total <= 0:
        return total, np.zeros(d), np.zeros(d)
    mean = sums[1:] / total
    m2 = _csr_column_sums(X, weight, center=mean)[2]
    mpi_comm.Allreduce(MPI.IN_PLACE, m2, op=MPI.SUM)
    return total, mean, m2


def scales_from_moments(total: float, mean: np.ndarray, m2: np.ndarray, *, fit_intercept: bool):
    """``(μ, σ, constant)`` of the standardisation (host float64): centred and scaled by the standard
    deviation with an intercept, scaled by the root mean square without; constant or zero columns
    (``constant``, a boolean mask) get ``σ = 1``."""
    if total <= 0:
        return np.zeros_like(mean), np.ones_like(mean), np.ones(mean.shape, dtype=bool)
    variance = m2 / total
    if fit_intercept:
        center = mean.copy()
        scale = np.sqrt(variance)
        constant = scale <= CONSTANT_RELATIVE * np.maximum(np.abs(mean), np.finfo(np.float64).tiny)
    else:
        center = np.zeros_like(mean)
        scale = np.sqrt(variance + mean * mean)
        constant = scale <= np.finfo(np.float64).tiny
    scale[constant] = 1.0
    return center, scale, constant


def scaling_for(objective, *, standardize: bool, fit_intercept: bool, l2: float = 0.0,
                penalty_scale: str = "original") -> "ColumnScaling":
    """The :class:`ColumnScaling` of an objective's parameter block: from one pass over its data
    (collective) with ``standardize``, the identity without.

    With an L2 penalty on the original coefficients, the scale of column ``j`` is ``sqrt(σ_j² + λ/c)``
    (``c`` the loss's curvature bound) instead of ``σ_j``: the Hessian at the start point then has a unit
    diagonal (exactly for squared loss, and for logistic loss at ``w = 0``), so that columns of tiny
    ``σ_j``, whose penalty ``λ/σ_j²`` would dominate in plain standardised coordinates, do not make the
    problem ill-conditioned again.
    """
    split = getattr(objective, "splits_parameters", False)
    width = objective.d_local if split else objective.d
    n_classes = getattr(objective, "n_classes", 1)
    if not standardize:
        return ColumnScaling(np.zeros(width), np.ones(width), objective.xp, identity=True, n_classes=n_classes)
    total, mean, m2 = objective.column_moments()
    center, scale, constant = scales_from_moments(total, mean, m2, fit_intercept=fit_intercept)
    if l2 and penalty_scale == "original":
        scale = np.sqrt(scale * scale + l2 / objective.curvature)
    return ColumnScaling(center, scale, objective.xp, constant=constant, centred=fit_intercept,
                         global_dot=objective.dot if split else None, n_classes=n_classes,
                         column_sum=objective.sum_over_columns if split and n_classes > 1 else None)


def _to_host(xp, array) -> np.ndarray:
    return np.asarray(host_copy_of(xp, array))


class ColumnScaling:
    """The affine map between standardised ``p̃ = [v, c]`` and original ``p = [w, b]`` parameters.

    Parameters
    ----------
    mean, scale : ndarray, (d_local,)
        Host float64 ``μ`` and ``σ`` of the columns whose coefficients this rank holds.
    xp : module
        Array namespace of the parameter vectors.
    constant : ndarray of bool, optional
        Columns found constant (left unscaled).
    centred : bool
        Whether ``μ`` is subtracted (with an intercept); the same on every rank, since the intercept's
        shift ``μ·w`` is then a collective in grid modes.
    identity : bool
        Standardisation is off (``μ = 0``, ``σ = 1``): the objective is used as it is.
    global_dot : callable, optional
        ``global_dot(a, b) -> float``, the objective's inner product of parameter-shaped vectors, when a
        rank holds only a block of ``w`` (grid modes); None computes ``μ·w`` locally on the device.
    n_classes : int
        K of a multinomial model's ``(d + 1, K)`` parameters (1: the vector ``[w, b]``).
    column_sum : callable, optional
        ``column_sum(partial)``, in place: the sum over the ranks' column blocks of a K-vector (``μᵀW`` of a
        multinomial model whose rank holds rows ``c0 .. c1`` of ``W``, grid modes); None: ``W`` is whole here.
    """

    def __init__(self, mean, scale, xp, *, constant=None, centred: bool = False, identity: bool = False,
                 global_dot=None, n_classes: int = 1, column_sum=None):
        self.xp = xp
        self.constant_columns = int(np.count_nonzero(constant)) if constant is not None else 0
        self.d = len(mean)
        self.mean_host = np.asarray(mean, dtype=np.float64)
        self.scale_host = np.asarray(scale, dtype=np.float64)
        self.centred = bool(centred)
        self.identity = bool(identity)
        self.scale = xp.asarray(self.scale_host)
        self.ratio = xp.asarray(self.mean_host / self.scale_host)
        self.mean_ext = xp.asarray(np.append(self.mean_host, 0.0))   # [μ, 0]: μ·w through a parameter dot
        self.global_dot = global_dot
        self._work = xp.empty(self.d, dtype=xp.float64)
        self.n_classes = int(n_classes)
        self.n_params = (self.d + 1) * self.n_classes
        self.column_sum = column_sum
        if self.n_classes > 1:
            if global_dot is not None and column_sum is None:
                raise ValueError("multinomial parameters split over ranks need column_sum")
            self.mean = xp.asarray(self.mean_host)
            self._outer = xp.empty((self.d, self.n_classes), dtype=xp.float64)
            self._shift = xp.empty(self.n_classes, dtype=xp.float64)

    @property
    def is_identity(self) -> bool:
        """True when standardisation is off (the same on every rank)."""
        return self.identity

    def _matrices(self, flat):
        """``(coefficients (d, K), intercepts (K,))`` views of a flat multinomial parameter vector."""
        split = self.d * self.n_classes
        return flat[:split].reshape(self.d, self.n_classes), flat[split:]

    def _mean_dot(self, W) -> None:
        """``_shift = μᵀW`` (K,), summed over the column blocks when ``W`` is split over ranks."""
        self.xp.dot(self.mean, W, out=self._shift)
        if self.column_sum is not None:
            self.column_sum(self._shift)

    def to_original(self, std, out) -> None:
        """``out = A std``: ``w = v/σ``, ``b = c − μ·w``."""
        xp, d = self.xp, self.d
        if self.n_classes > 1:
            V, c = self._matrices(std)
            W, b = self._matrices(out)
            xp.divide(V, self.scale[:, None], out=W)
            b[...] = c
            if self.centred:
                self._mean_dot(W)
                b -= self._shift
            return
        xp.divide(std[:d], self.scale, out=out[:d])
        out[d] = std[d]
        if not self.centred:
            return
        if self.global_dot is None:
            out[d] -= xp.dot(self.mean_ext[:d], out[:d])
        else:
            out[d] -= self.global_dot(self.mean_ext, out)

    def from_original(self, original, out) -> None:
        """``out = A⁻¹ original``: ``v = w σ``, ``c = b + μ·w``."""
        xp, d = self.xp, self.d
        if self.n_classes > 1:
            W, b = self._matrices(original)
            V, c = self._matrices(out)
            c[...] = b
            if self.centred:
                self._mean_dot(W)
                c += self._shift
            xp.multiply(W, self.scale[:, None], out=V)
            return
        out[d] = original[d]
        if self.centred:
            if self.global_dot is None:
                out[d] += xp.dot(self.mean_ext[:d], original[:d])
            else:
                out[d] += self.global_dot(self.mean_ext, original)
        xp.multiply(original[:d], self.scale, out=out[:d])

    def gradient_to_std(self, grad, out) -> None:
        """``out = Aᵀ grad``: ``g̃_v = g_w/σ − (μ/σ) g_b``, ``g̃_c = g_b``."""
        xp, d = self.xp, self.d
        if self.n_classes > 1:
            G, g_b = self._matrices(grad)
            G_std, g_c = self._matrices(out)
            xp.divide(G, self.scale[:, None], out=G_std)
            if self.centred:
                xp.multiply(self.ratio[:, None], g_b[None, :], out=self._outer)
                G_std -= self._outer
            g_c[...] = g_b
            return
        xp.divide(grad[:d], self.scale, out=out[:d])
        if self.centred:
            xp.multiply(self.ratio, grad[d], out=self._work)
            out[:d] -= self._work
        out[d] = grad[d]


class StandardizedObjective:
    """An objective (data-parallel or grid) seen in standardised coordinates; the same interface.

    Parameters
    ----------
    inner : objective
        Works in original coordinates (see :mod:`pgd.strategies`).
    scaling : ColumnScaling
        ``μ`` and ``σ`` of the columns of this rank's parameter block.
    l2 : float
        The penalty λ of the run.
    penalty_scale : {"original", "standardized"}
        Which coefficients the penalties apply to.  With ``"standardized"`` the inner objective's own L2
        penalty is switched off and applied here to ``v``.
    """

    def __init__(self, inner, scaling: ColumnScaling, *, l2: float, penalty_scale: str = "original"):
        if penalty_scale not in PENALTY_SCALES:
            raise ValueError(f"penalty_scale must be one of {PENALTY_SCALES}")
        self.inner, self.scaling = inner, scaling
        self.xp = inner.xp
        self.l2 = float(l2)
        self.penalty_scale = penalty_scale
        self.std_l2 = self.l2 if penalty_scale == "standardized" else 0.0
        if self.std_l2:
            inner.l2 = 0.0
        xp, length = self.xp, scaling.n_params
        self.n_penalised = scaling.d * scaling.n_classes   # coefficients first, then the intercept(s)
        self._original = xp.zeros(length, dtype=xp.float64)
        self._grad = xp.zeros(length, dtype=xp.float64)

    # what the loop, the optimizers and the checkpoints read from an objective
    def __getattr__(self, name):
        if name.startswith("_") or name in ("inner", "scaling"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def compute_seconds(self) -> float:
        return self.inner.compute_seconds

    @compute_seconds.setter
    def compute_seconds(self, value: float) -> None:
        self.inner.compute_seconds = value

    def zeros(self):
        """The start ``p̃ = 0`` (which is ``w = 0, b = 0``)."""
        return self.inner.zeros()

    def dot(self, a, b) -> float:
        """Global inner product of two standardised parameter vectors."""
        return self.inner.dot(a, b)

    def norm_inf(self, v) -> float:
        """Global max-norm of a parameter vector."""
        return self.inner.norm_inf(v)

    def _finish(self, loss: float, params, grad_out) -> float:
        self.scaling.gradient_to_std(self._grad, grad_out)
        if self.std_l2:
            split = self.n_penalised
            grad_out[:split] += self.std_l2 * params[:split]
            intercepts = params[split:]
            loss += 0.5 * self.std_l2 * (self.inner.dot(params, params) - float(self.xp.dot(intercepts, intercepts)))
        return loss

    def value_and_grad(self, params, grad_out) -> float:
        """The objective at standardised ``params``; its standardised gradient into ``grad_out``."""
        self.scaling.to_original(params, self._original)
        return self._finish(self.inner.value_and_grad(self._original, self._grad), params, grad_out)

    def value_and_grad_batch(self, params, grad_out, local_rows, batch_size: float) -> float:
        """Mini-batch version of :meth:`value_and_grad` (``--optimizer sgd``)."""
        self.scaling.to_original(params, self._original)
        loss = self.inner.value_and_grad_batch(self._original, self._grad, local_rows, batch_size)
        return self._finish(loss, params, grad_out)

    def full_params(self, params) -> np.ndarray:
        """The whole original-scale ``[w, b]`` as a host float64 vector on every rank."""
        self.scaling.to_original(params, self._original)
        return self.inner.full_params(self._original)

    def penalty_diagonal(self):
        """The L2 penalty's Hessian in standardised coordinates (``λ/σ²`` or ``λ``; 0 for ``c``)."""
        return self.xp.asarray(self.l2 * penalty_factors(self.scaling, self.penalty_scale) ** 2)

    @property
    def l1_weights(self):
        """Per-coordinate factors of the L1 penalty in standardised coordinates (0 for the intercept)."""
        return self.xp.asarray(penalty_factors(self.scaling, self.penalty_scale))

    def gram_product(self, params, out) -> None:
        """``Aᵀ (X̃ᵀSX̃/Σs) A params``: the standardised design's Gram operator."""
        self.scaling.to_original(params, self._original)
        self.inner.gram_product(self._original, self._grad)
        self.scaling.gradient_to_std(self._grad, out)

    def lipschitz(self, power_iters: int, seed: int) -> float:
        """``L = c·λmax(standardised Gram) + largest penalty curvature``, by distributed power iteration."""
        return curvature_bound(self, power_iters, seed, self.penalty_diagonal())


def penalty_factors(scaling: ColumnScaling, penalty_scale: str) -> np.ndarray:
    """Host ``(d + 1,)`` factors turning original-scale penalty coefficients into the optimizer's
    coordinates: ``1/σ_j`` for ``"original"`` (an L1 factor; square it for L2), ones for ``"standardized"``,
    0 for the intercept; each repeated K times for a multinomial model's ``(d + 1, K)`` parameters."""
    factors = np.ones(scaling.d) if penalty_scale == "standardized" else 1.0 / scaling.scale_host
    return np.repeat(np.append(factors, 0.0), scaling.n_classes)


def describe(scaling: ColumnScaling, penalty_scale: str) -> str:
    """One phrase for the run summary and the model file."""
    if scaling.is_identity:
        return "off"
    centred = "centred and scaled" if scaling.centred else "scaled"
    extra = f"; {scaling.constant_columns} constant column(s) left unscaled" if scaling.constant_columns else ""
    return f"on ({centred} inside the objective; penalties on {penalty_scale} coefficients{extra})"
