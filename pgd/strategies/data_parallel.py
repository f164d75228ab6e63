"""Synchronous data parallelism: each rank holds a block of rows; gradients are summed every step.

Local sums, global normalisation: a rank computes the *sums* of its rows' losses and gradients into one
buffer ``[Σ g_w (d), Σ g_b, Σ loss]``, one Allreduce adds the buffers, and one division by the global row
count follows.  A rank without rows contributes zeros and still joins every collective.
"""

from __future__ import annotations

import time

import numpy as np

from pgd.comm.device import make_device_communicator
from pgd.device.backend import host_copy_of
from pgd.device.kernels import FinishKernel
from pgd.device.ops import CupyOps
from pgd.errors import InputError
from pgd.loader.classes import prepare_classes
from pgd.loader.host import load_row_slab_on
from pgd.loader.validation import validation_rows
from pgd.local.losses import get_loss
from pgd.local.multinomial import LocalMultinomialGradient
from pgd.local.power import coefficient_diagonal, curvature_bound
from pgd.local.sparse import is_sparse, local_gradient
from pgd.strategies.grid import grid_shape
from pgd.strategies.standardize import column_moments


class ReplicatedParameters:
    """Parameter-vector operations of objectives whose every rank holds the whole ``[w, b]``.

    Needs the attributes ``d`` and ``xp``; ``n_classes`` (K, default 1) and ``n_params`` (default d + 1)
    for a multinomial model's flat ``(d + 1, K)`` matrix ``[W; b]`` whose last K entries are intercepts.
    """

    _norm_work = None
    splits_parameters = False  # every rank holds the whole [w, b]
    n_classes = 1

    @property
    def n_params(self) -> int:
        """Length of the parameter vector: ``(d + 1) K``."""
        return (self.d + 1) * self.n_classes

    def zeros(self):
        """Initial parameters ``[w = 0, b = 0]`` (length :attr:`n_params`)."""
        return self.xp.zeros(self.n_params, dtype=self.xp.float64)

    def start_vector(self, seed: int):
        """The power iteration's start vector for ``seed`` (0 in the intercept slots without intercept)."""
        vector = self.xp.asarray(np.random.default_rng(seed).standard_normal(self.n_params))
        if not self.fit_intercept:
            vector[self.d * self.n_classes:] = 0.0
        return vector

    def norm_inf(self, v) -> float:
        """Max-norm of a replicated parameter vector (no communication needed)."""
        if self._norm_work is None or self._norm_work.shape != v.shape:
            self._norm_work = self.xp.empty_like(v)
        self.xp.abs(v, out=self._norm_work)
        return float(self._norm_work.max()) if v.size else 0.0

    def full_params(self, params) -> np.ndarray:
        """The whole ``[w, b]`` as a host float64 vector (every rank holds all of it already)."""
        return np.asarray(host_copy_of(self.xp, params), dtype=np.float64)

    def dot(self, a, b) -> float:
        """Inner product of two replicated parameter vectors (no communication needed)."""
        return float(self.xp.dot(a, b))


class DataParallelObjective(ReplicatedParameters):
    """The global objective ``(1/Σs) Σ s_i loss_i + (λ/2)‖w‖²`` over row-partitioned data.

    The parameters are ``[w, b]`` (length d + 1), or for a multinomial model the flat row-major ``(d + 1, K)``
    matrix ``[W; b]`` (``local.n_classes`` = K, the penalty on the first ``d K`` entries).

    Parameters
    ----------
    local : pgd.local.linear.LocalLinearGradient or pgd.local.multinomial.LocalMultinomialGradient
        This rank's rows (and weights) and the blocked gradient kernel.
    comm : pgd.comm.host.Communicator
        Sums the per-rank buffers.
    n_global : int
        Rows over all ranks.
    l2 : float
        Penalty λ on ``w`` (never on the intercept).
    xp : module
        Array module of ``local``.
    curvature : float
        The loss's bound on its second derivative.
    finish : callable, optional
        The GPU finishing kernel.
    total_weight : float, optional
        ``Σ s_i`` over all ranks, the one normalisation (``n_global`` without sample weights).
    """

    def __init__(self, local, comm, n_global: int, l2: float, xp, curvature: float, finish=None,
                 total_weight: float | None = None):
        self.local = local
        self.comm = comm
        self.n_global = int(n_global)
        self.normalizer = float(self.n_global if total_weight is None else total_weight)
        self.fit_intercept = local.fit_intercept
        self.l2 = float(l2)
        self.xp = xp
        self.curvature = float(curvature)
        self.finish = finish
        self.d = local.d
        self.n_classes = int(getattr(local, "n_classes", 1))
        self.n_penalised = self.d * self.n_classes   # the coefficients; the intercepts are the rest
        self.compute_seconds = 0.0
        self.row_range = (0, local.n_local)  # this rank's global rows [start, stop)
        self._sums = xp.zeros(self.n_params + 1, dtype=xp.float64)
        self._norm_sq = (None, 0.0)   # (gradient buffer, its squared norm) from the finishing kernel

    def _summed(self, params, *, gram: bool = False, rows=None):
        """The local sums at ``params`` (on ``rows`` if given; the Gram product with ``gram``), timed, then
        summed over ranks (not yet normalised)."""
        self._norm_sq = (None, 0.0)
        started = time.perf_counter()
        self.local.sums_at(params, self._sums, gram=gram, rows=rows)
        self.compute_seconds += time.perf_counter() - started
        self.comm.allreduce(self._sums)
        return self._sums

    def _reduced_sums(self, params, *, gram: bool = False, rows=None, count=None):
        """:meth:`_summed` divided by ``count`` (the normalisation Σs by default)."""
        sums = self._summed(params, gram=gram, rows=rows)
        sums /= self.normalizer if count is None else count
        return sums

    def value_and_grad(self, params, grad_out) -> float:
        """Global loss at ``params``; the gradient goes to ``grad_out`` (length d + 1).

        With a device ``finish`` kernel (GPU runs) normalisation, penalty, loss and ``|grad|^2`` take one
        launch and one host synchronisation; :meth:`dot` then answers ``dot(grad_out, grad_out)`` from it.
        """
        if self.finish is None:
            return self._penalised(self._reduced_sums(params), params, grad_out)
        loss, norm_sq = self.finish(self._summed(params), params, grad_out, self.normalizer, self.l2)
        self._norm_sq = (grad_out, norm_sq)
        return loss

    def value_and_grad_batch(self, params, grad_out, local_rows, batch_size: float) -> float:
        """Mini-batch objective: this rank's ``local_rows`` (index array, local numbering) belong to a
        global batch worth ``batch_size`` rows; one Allreduce, one division by ``batch_size``."""
        sums = self._reduced_sums(params, rows=local_rows, count=batch_size)
        return self._penalised(sums, params, grad_out)

    def dot(self, a, b) -> float:
        """Inner product of two replicated parameter vectors; the squared norm of the gradient just
        evaluated comes from the finishing kernel (optimizers never modify a gradient in place)."""
        if a is b and a is self._norm_sq[0]:
            return self._norm_sq[1]
        return super().dot(a, b)

    @property
    def l1_weights(self):
        """Per-coordinate L1 factors of a multinomial model (ones, 0 for the K intercepts); None for
        ``[w, b]``, whose optimizers exempt the last entry themselves."""
        if self.n_classes == 1:
            return None
        return coefficient_diagonal(self.xp, self.n_params, self.n_penalised, 1.0)

    def _penalised(self, sums, params, grad_out) -> float:
        """Copy the normalised sums into ``grad_out`` and add the L2 penalty; returns the loss."""
        n_penalised = self.n_penalised
        w = params[:n_penalised]
        grad_out[...] = sums[: self.n_params]
        loss = float(sums[self.n_params])
        if self.l2:
            grad_out[:n_penalised] += self.l2 * w
            loss += 0.5 * self.l2 * float(self.xp.dot(w, w))
        return loss

    def column_moments(self):
        """``(Σs, mean, Σ s (x − mean)²)`` of every column over all ranks' rows (collective; host float64)."""
        local = self.local
        return column_moments(self.comm.mpi_comm, local.X, local.sample_weight, self.xp, local.block_rows)

    def gram_product(self, params, out) -> None:
        """``out = X̃ᵀSX̃ params / Σs`` (one pass and one Allreduce; X̃ has the intercept column if fitted)."""
        out[...] = self._reduced_sums(params, gram=True)[: self.n_params]

    def lipschitz(self, power_iters: int, seed: int) -> float:
        """Upper-curvature estimate ``L = λmax(c·X̃ᵀSX̃/Σs + λ·diag(1..1, 0))`` by distributed power
        iteration (``c``: the loss's curvature bound, 1 for squared, ¼ for logistic, ½ for multinomial)."""
        penalty = coefficient_diagonal(self.xp, self.n_params, self.n_penalised, self.l2) if self.l2 else None
        return curvature_bound(self, power_iters, seed, penalty)


def device_finish(backend, n_classes: int = 1):
    """The finishing kernel of :class:`DataParallelObjective` on a GPU backend (``[w, b]`` only), else None."""
    if not backend.is_gpu or n_classes > 1:
        return None

    return FinishKernel(backend.xp, CupyOps(backend.xp))


def build_data_parallel(cfg, world, backend, *, holds_data: bool = True):
    """Load this rank's rows and build the data-parallel objective.

    ``holds_data`` is False on ranks that hold no rows (the asynchronous modes' parameter servers): the rows
    are then split over the others, and the objective still spans ``world`` (those ranks add zeros).

    Returns
    -------
    (objective, slab)
        With ``--loss multinomial`` the slab carries ``n_classes`` (K); ``slab.validation`` holds this rank's
        validation rows (:class:`pgd.loader.validation.ValidationRows`) or None.
    """
    if cfg.grid:
        grid_shape("data", cfg.grid, world.Get_size())  # --grid must then be Nx1
    multinomial = cfg.loss == "multinomial"
    slab = load_row_slab_on(world, holds_data, cfg.data, backend=backend, dtype=cfg.dtype, x_key=cfg.x_key,
                            y_key=cfg.y_key, locking=cfg.hdf5_locking, loss=cfg.loss, weight_key=cfg.weight_key,
                            class_weight=None if multinomial else cfg.class_weight)
    loss = get_loss(cfg.loss)
    if is_sparse(slab.X) and (cfg.validation or cfg.validation_fraction):
        raise InputError(f"{cfg.data} is sparse (CSR): validation (--validation, --validation-fraction) does not "
                         f"run on CSR data yet; train on a dense copy (pgd data convert {cfg.data} DENSE.h5 "
                         "--from h5 --to dense)", collective=True)
    if multinomial:
        slab.n_classes = prepare_classes(world, slab, backend, requested=cfg.classes, class_weight=cfg.class_weight)
    slab, validation = validation_rows(world, cfg, backend, slab)   # held-out rows leave the training slab
    if multinomial:
        block_bytes = cfg.block_bytes if not backend.is_gpu else 1 << 62   # a GPU: the slab in one pair of GEMMs
        local = LocalMultinomialGradient(slab.X, slab.y, slab.n_classes, fit_intercept=cfg.fit_intercept,
                                         xp=backend.xp, block_bytes=block_bytes, sample_weight=slab.weight)
    else:
        local = local_gradient(slab.X, slab.y, loss, fit_intercept=cfg.fit_intercept, xp=backend.xp,
                               block_bytes=cfg.block_bytes, sample_weight=slab.weight)
    comm = make_device_communicator(cfg.comm, world, backend, cfg.cuda_aware)
    objective = DataParallelObjective(local, comm, slab.n_global, cfg.l2, backend.xp,
                                      curvature=loss.curvature_bound,
                                      finish=device_finish(backend, getattr(local, "n_classes", 1)),
                                      total_weight=slab.total_weight)
    objective.row_range = (slab.start, slab.stop)
    slab.validation = validation
    return objective, slab
