"""The Gram solver for squared loss: reduce ``X̃ᵀSX̃`` and ``X̃ᵀSy`` once, then solve in O(d³) without the data.

With the design ``X̃ = [(X − μ)/σ, 1]`` in the optimizer's coordinates (standardised when ``--standardize``
is on, ``μ = 0, σ = 1`` otherwise; ``X`` alone without intercept), row weights ``s`` and ``W = Σs``:
``G = X̃ᵀSX̃/W``, ``c = X̃ᵀSy/W`` and ``q = yᵀSy/W``, the objective is

    f(p) = ½ pᵀGp − pᵀc + ½q + ½ Σ_j λ_j p_j²,      ∇f(p) = Gp − c + λ∘p

where ``λ_j`` is the L2 penalty in those coordinates (``λ/σ_j²`` for the penalty on the original ``w``,
``λ`` on the standardised coefficients, 0 for the intercept).  Building it costs one pass over the data
(``2·n_local·(d+1)²`` flops, BLAS-3, the rows centred and scaled in float64 block by block, so large
column means do not cancel) and one Allreduce of ``(d+1)² + d + 2`` numbers.  Then
:mod:`pgd.optim.direct` solves the normal equations (Cholesky, with a minimum-norm fallback for collinear
columns) or, with ``--l1``, runs coordinate descent on ``G`` (glmnet's covariance updates).

``--solver auto`` (the default for squared loss) takes this route for d up to a measured crossover, see
:func:`gram_is_cheaper`.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from pgd.device.backend import host_copy_of
from pgd.errors import InputError
from pgd.local.sparse import row_blocks, row_range
from pgd.strategies.data_parallel import ReplicatedParameters

#: Largest Gram matrix (bytes, float64) that ``--solver auto`` will build.
MAX_GRAM_BYTES = 1 << 30

#: ``--solver auto`` takes the Gram route for d up to this many columns (measured crossover, see
#: :func:`gram_is_cheaper` and the README).
AUTO_MAX_COLUMNS = 2048


class GramObjective(ReplicatedParameters):
    """The squared-loss objective from its reduced Gram matrix; same interface as the data-parallel one.

    Parameters
    ----------
    gram : array, (d + 1, d + 1), float64
        ``X̃ᵀSX̃/W`` (last row and column zero without intercept).
    moment : array, (d + 1,), float64
        ``X̃ᵀSy/W``.
    mean_square : float
        ``yᵀSy/W``.
    l2_diagonal : array, (d + 1,), float64
        The L2 penalty per coordinate (0 for the intercept).
    xp : module
        Array module.
    comm : pgd.comm.host.Communicator
        Kept for the timing split (no communication happens after the set-up).
    scaling : pgd.strategies.standardize.ColumnScaling
        Maps these coordinates to the original ``[w, b]``.
    fit_intercept : bool
        Whether the last coordinate is the intercept (else it stays 0).
    l1_weights : array, (d + 1,), optional
        Factors of the L1 penalty per coordinate (see :mod:`pgd.optim.prox`).
    """

    def __init__(self, gram, moment, mean_square: float, l2_diagonal, xp, comm, *, scaling, fit_intercept: bool,
                 l1_weights=None):
        self.gram, self.moment, self.mean_square = gram, moment, float(mean_square)
        self.l2_diagonal = l2_diagonal
        self.xp, self.comm, self.scaling = xp, comm, scaling
        self.fit_intercept = bool(fit_intercept)
        self.l1_weights = l1_weights
        self.d = gram.shape[0] - 1
        self.compute_seconds = 0.0
        self._product = xp.empty(self.d + 1, dtype=xp.float64)
        self._original = xp.empty(self.d + 1, dtype=xp.float64)

    def value_and_grad(self, params, grad_out) -> float:
        """Global loss at ``params``; the gradient goes to ``grad_out`` (length d + 1)."""
        started = time.perf_counter()
        xp = self.xp
        xp.dot(self.gram, params, out=self._product)
        xp.subtract(self._product, self.moment, out=grad_out)
        # ½pᵀGp − pᵀc = ½ pᵀ(Gp − c) − ½ pᵀc
        loss = 0.5 * (float(xp.dot(params, grad_out)) - float(xp.dot(params, self.moment)) + self.mean_square)
        xp.multiply(self.l2_diagonal, params, out=self._product)
        grad_out += self._product
        loss += 0.5 * float(xp.dot(self._product, params))
        self.compute_seconds += time.perf_counter() - started
        return loss

    def system(self):
        """``(A, c)`` of the normal equations ``A p = c``, ``A = G + diag(λ)``, on the host."""
        to_host = partial(host_copy_of, self.xp)
        matrix = np.array(to_host(self.gram), dtype=np.float64)
        matrix[np.diag_indices_from(matrix)] += np.asarray(to_host(self.l2_diagonal))
        return matrix, np.array(to_host(self.moment), dtype=np.float64)

    def lipschitz(self, power_iters: int, seed: int) -> float:
        """``L = λmax(G + diag(λ))``, exact (a symmetric eigenvalue solve of size d + 1)."""
        return float(np.linalg.eigvalsh(self.system()[0])[-1])

    def full_params(self, params) -> np.ndarray:
        """The original-scale ``[w, b]`` as a host float64 vector."""
        self.scaling.to_original(params, self._original)
        return super().full_params(self._original)


def reduce_gram(objective, scaling, *, l2_diagonal, l1_weights=None) -> GramObjective:
    """Build ``G``, ``c``, ``q`` in the coordinates of ``scaling`` from every rank's rows (float64, block by
    block) and one Allreduce.

    Parameters
    ----------
    objective : pgd.strategies.DataParallelObjective
        Supplies ``local`` (the rows and weights), ``comm``, ``normalizer`` and ``xp``.
    scaling : pgd.strategies.standardize.ColumnScaling
        ``μ``, ``σ`` of the columns (identity without standardisation).
    l2_diagonal : array, (d + 1,)
        The L2 penalty per coordinate of those coordinates.
    l1_weights : array, (d + 1,), optional
        The L1 factors per coordinate.
    """
    local, xp = objective.local, objective.xp
    d1 = local.d + 1
    buffer = xp.zeros(d1 * d1 + d1 + 1, dtype=xp.float64)
    gram = buffer[: d1 * d1].reshape(d1, d1)
    moment = buffer[d1 * d1: d1 * d1 + d1]
    sums = _csr_gram_sums if getattr(local, "sparse", False) else _dense_gram_sums
    sums(local, scaling, gram, moment, buffer)
    objective.comm.allreduce(buffer)
    buffer /= objective.normalizer
    if local.fit_intercept:  # identical symmetric bits on every rank
        gram[-1, :-1] = gram[:-1, -1]
    upper = xp.triu_indices(d1, 1)
    gram.T[upper] = gram[upper]
    return GramObjective(gram, moment, float(buffer[-1]), l2_diagonal, xp, objective.comm, scaling=scaling,
                         fit_intercept=local.fit_intercept, l1_weights=l1_weights)


def _dense_gram_sums(local, scaling, gram, moment, buffer) -> None:
    """Add a rank's dense rows to ``G``, ``c``, ``q`` (unnormalised), centred and scaled in float64 block by
    block."""
    xp = local.xp
    mean = xp.asarray(scaling.mean_host)
    for start in range(0, local.n_local, local.block_rows):
        X = local.X[start:start + local.block_rows].astype(xp.float64)
        y = local.y[start:start + local.block_rows].astype(xp.float64)
        if scaling.centred:
            X -= mean
        X /= scaling.scale
        if local.sample_weight is None:
            weighted, wy = X, y
        else:
            s = local.sample_weight[start:start + local.block_rows].astype(xp.float64)
            weighted, wy = X * s[:, None], y * s
        gram[:-1, :-1] += weighted.T @ X
        moment[:-1] += X.T @ wy
        buffer[-1] += float(y @ wy)
        if local.fit_intercept:
            gram[:-1, -1] += weighted.sum(axis=0)
            moment[-1] += float(wy.sum())
            gram[-1, -1] += float(wy.size if local.sample_weight is None else s.sum())


def _csr_gram_sums(local, scaling, gram, moment, buffer) -> None:
    """Add a rank's CSR rows to ``G``, ``c``, ``q`` (unnormalised) without densifying them: the raw
    ``XᵀSX`` (a sparse product, stored dense: d is small on this route), ``XᵀS1``, ``XᵀSy``, then centring
    and scaling applied to those sums, ``D⁻¹(XᵀSX − μaᵀ − aμᵀ + Wμμᵀ)D⁻¹`` with ``a = XᵀS1``.  The data
    is never centred, so columns whose mean is large against their spread lose digits here that the dense
    route, which centres rows in float64, keeps."""
    X, d = local.X, local.d
    raw, column_sums, cross = np.zeros((d, d)), np.zeros(d), np.zeros(d)
    total = weighted_y = 0.0
    for start, stop in row_blocks(X):
        block = row_range(X, start, stop).astype(np.float64)
        y = local.y[start:stop].astype(np.float64)
        s = np.ones(stop - start) if local.sample_weight is None else local.sample_weight[start:stop].astype(np.float64)
        weighted = block.multiply(s[:, None]).tocsr()
        raw += (block.T @ weighted).toarray()
        column_sums += weighted.T @ np.ones(stop - start)
        cross += weighted.T @ y
        total += float(s.sum())
        weighted_y += float(s @ y)
        buffer[-1] += float(y @ (s * y))
    mean = scaling.mean_host if scaling.centred else np.zeros(d)
    inverse = 1.0 / scaling.scale_host
    centred = raw - np.outer(mean, column_sums) - np.outer(column_sums, mean) + total * np.outer(mean, mean)
    gram[:-1, :-1] += centred * np.outer(inverse, inverse)
    moment[:-1] += (cross - mean * weighted_y) * inverse
    if local.fit_intercept:
        gram[:-1, -1] += (column_sums - total * mean) * inverse
        moment[-1] += weighted_y
        gram[-1, -1] += total


#: ``--solver auto`` leaves the Gram route for CSR data when a column's mean exceeds this many of its scales:
#: the sparse route centres algebraically (``XᵀSX − Wμμᵀ``) and would lose about log10(ratio²) digits.
CSR_CENTRING_RATIO = 1e3


def csr_gram_hazard(objective, scaling) -> str:
    """Why the Gram route would be inaccurate on this CSR objective (``""`` when it is not, or the data is
    dense): columns whose mean is over :data:`CSR_CENTRING_RATIO` times their scale."""
    if not getattr(getattr(objective, "local", None), "sparse", False) or not scaling.centred:
        return ""
    count = int(np.count_nonzero(np.abs(scaling.mean_host) > CSR_CENTRING_RATIO * scaling.scale_host))
    if not count:
        return ""
    return (f"{count} CSR column(s) with |mean| > {CSR_CENTRING_RATIO:g} x their spread would lose digits in "
            f"the Gram route")


def gram_is_cheaper(d: int) -> bool:
    """``--solver auto``'s rule: the Gram route when ``d`` is at most :data:`AUTO_MAX_COLUMNS` and ``G`` fits
    in :data:`MAX_GRAM_BYTES`.  Measured by ``benchmarks/gram_crossover.py`` (docs/optimizers.md): on
    correlated columns (condition number 1e4) the Gram route took 0.07–0.4× lbfgs's time up to d = 1024,
    0.84× at 2048 and 3.2× at 4096; on isotropic columns, where lbfgs needs only 3–17 iterations, it is
    slower (1.4–20×) but still exact."""
    return d <= AUTO_MAX_COLUMNS and 8 * (d + 1) ** 2 <= MAX_GRAM_BYTES


def _why_not_direct(cfg, objective) -> str:
    """Why ``--solver auto`` cannot take the direct (Gram) route, for the summary."""
    if cfg.loss != "squared":
        return f"{cfg.loss} loss has no direct solution"
    if not hasattr(objective, "local"):
        return "the direct solver needs --mode data"
    return "--optimizer given"


def select_solver(cfg, objective):
    """Apply ``--solver``: returns ``(use_gram, description)``, the description for the summary."""
    choice = cfg.solver or "iterative"
    if choice == "iterative":
        return False, "iterative"
    optimizer = cfg.optimizer
    usable = cfg.loss == "squared" and optimizer in ("auto", None) and hasattr(objective, "local")
    if choice == "gram" and not usable:
        raise InputError("--solver gram needs --loss squared and --mode data, and solves the normal equations "
                         "itself (leave --optimizer at auto)", collective=True)
    if choice == "auto":
        if not usable:
            return False, f"iterative (auto: {_why_not_direct(cfg, objective)})"
        if not gram_is_cheaper(objective.d):
            return False, f"iterative (auto: d = {objective.d} is above the Gram crossover)"
    how = "auto: cheaper than iterating" if choice == "auto" else "requested"
    return True, f"gram ({how})"
