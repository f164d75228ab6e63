"""Feature (model) parallelism and the hybrid P×Q grid: ranks hold blocks of rows *and* columns.

Conventions
-----------
- The ranks form a Cartesian grid of ``P`` row groups × ``Q`` column groups (``--grid PxQ``); the rank at
  ``(p, q)`` holds ``X[rows_p, cols_q]``, ``y[rows_p]`` and the weight block ``w_q`` (both ranges from
  :func:`pgd.data.block_range`). Feature mode is the grid ``1 × size``; ``--mode hybrid`` defaults to
  ``MPI.Compute_dims(size, 2)``.
- ``row_comm``: the ``Q`` ranks sharing my rows; ``col_comm``: the ``P`` ranks sharing my columns.
- Local parameter vector: ``[w_q, b]`` (length ``d_q + 1``); ``w_q`` is replicated over ``col_comm``, ``b``
  over all ranks, so every optimizer's elementwise update works unchanged on it, and :meth:`dot` is the
  global inner product (blocks of row group 0, ``b`` counted once by rank 0).
- One evaluation: ``z = Σ_q X_pq w_q`` (Allreduce of ``n_p`` numbers over ``row_comm``), ``r = loss'(y,
  z + b)``, ``g_q = Σ_p X_pqᵀ r`` (Allreduce of ``d_q`` float64 over ``col_comm``), and one Allreduce of three
  scalars over all ranks (``Σ r``, ``Σ loss`` from column group 0, ``‖w_q‖²`` from row group 0) so the loss
  and the stopping test are bit-identical everywhere. Local sums, one division by ``n``.
- Multinomial (K classes): the local block is ``[W_q (d_q, K) row-major, b (K)]`` (length ``(d_q + 1) K``),
  the scores ``Z = Σ_q X_pq W_q`` an Allreduce of ``n_p K`` numbers over ``row_comm``, the softmax residuals
  ``R``, ``G_q = X_pqᵀ R`` an Allreduce of ``d_q K`` float64 over ``col_comm``, and ``K + 2`` scalars over all
  ranks (the K intercept sums, the loss, ``‖W_q‖²``).
- A rank with no rows or no columns contributes zeros and joins every collective.
"""

from __future__ import annotations

import sys
import time
from functools import partial

import numpy as np
from mpi4py import MPI

from pgd.comm.host import make_communicator
from pgd.data import block_range
from pgd.data.rechunk import chunk_advice
from pgd.device.backend import host_copy_of
from pgd.errors import InputError
from pgd.loader.classes import prepare_classes
from pgd.loader.host import inspect_collectively, load_block, sparse_collectively
from pgd.local.losses import get_loss, sum64
from pgd.local.multinomial import SoftmaxResiduals, gram_weights, labels_as_indices
from pgd.local.power import coefficient_diagonal, curvature_bound
from pgd.local.subnormal import zero_tiny_weights
from pgd.strategies.standardize import column_moments


def parse_grid(text: str) -> tuple[int, int]:
    """``"PxQ"`` -> ``(P, Q)``; InputError when malformed."""
    try:
        rows, cols = (int(part) for part in str(text).lower().split("x"))
    except ValueError:
        raise InputError(f"--grid must be PxQ (e.g. 2x3), got {text!r}", collective=True) from None
    if rows < 1 or cols < 1:
        raise InputError(f"--grid must be PxQ with P, Q >= 1, got {text!r}", collective=True)
    return rows, cols


def grid_shape(mode: str, grid: str | None, size: int) -> tuple[int, int]:
    """The ``(P, Q)`` grid of ``mode`` on ``size`` ranks (the same on every rank, so errors are collective).

    ``data`` is ``size × 1``, ``feature`` is ``1 × size``; ``hybrid`` takes ``--grid`` or
    ``MPI.Compute_dims(size, 2)``.
    """
    default = {"data": (size, 1), "feature": (1, size)}.get(mode) or tuple(MPI.Compute_dims(size, 2))
    if grid is None:
        return default
    shape = parse_grid(grid)
    if shape[0] * shape[1] != size:
        raise InputError(f"--grid {grid} needs {shape[0] * shape[1]} ranks, but {size} are running",
                         collective=True)
    if mode in ("data", "feature") and shape != default:
        raise InputError(f"--mode {mode} runs on the grid {default[0]}x{default[1]}; use --mode hybrid "
                         f"for --grid {grid}", collective=True)
    return shape


class UnsupportedInGrid(InputError, AttributeError):
    """An optimizer asked a grid objective for something only the data-parallel one has (an
    AttributeError too, so ``getattr(objective, name, default)`` probes still work)."""


class GridCommunicators:
    """The three communicators of a grid objective, with counters summed over them."""

    def __init__(self, name: str, row, col, whole):
        self.name = name
        self.row, self.col, self.whole = row, col, whole
        self.parts = (row, col, whole)

    def reset_counters(self) -> None:
        """Zero the counters of every part."""
        for part in self.parts:
            part.reset_counters()

    @property
    def bytes(self) -> int:
        """Bytes this rank passed to reductions, over all parts."""
        return sum(part.bytes for part in self.parts)

    @property
    def calls(self) -> int:
        """Collective calls over all parts."""
        return sum(part.calls for part in self.parts)

    @property
    def seconds(self) -> float:
        """Seconds spent in collectives, over all parts."""
        return sum(part.seconds for part in self.parts)


def _sum(comm, buf) -> None:
    """Allreduce unless the group is one rank (then nothing moves and nothing is counted)."""
    if comm.size > 1:
        comm.allreduce(buf)


class GridObjective:
    """The global objective over a P×Q block partition of ``X``.

    A rank holds the block ``[w_q, b]`` of the parameters (``splits_parameters``), or ``[W_q, b]`` (flat,
    row-major ``(d_q + 1, K)``) for a multinomial model.

    Parameters
    ----------
    X : array, (n_p, d_q)
        This rank's block, C-contiguous float32 or float64 (either side may be 0).
    y : array, (n_p,)
        Targets of this rank's rows.
    sample_weight : array, (n_p,), or None
        Weights of this rank's rows (data dtype).
    loss : SquaredLoss, LogisticLoss or MultinomialLoss
        Pointwise loss (multinomial: ``y`` holds the labels 0 .. K-1).
    comms : GridCommunicators
        ``row`` (ranks sharing my rows), ``col`` (sharing my columns), ``whole`` (all ranks).
    coords : tuple of int
        ``(p, q)`` of this rank.
    n_global, d_global : int
        Shape of the whole ``X``.
    col_range : tuple of int
        ``(c0, c1)``: the columns of ``w`` this rank holds.
    l2 : float
        Penalty λ on ``w``.
    fit_intercept : bool
        Whether ``b`` is fitted.
    xp : module
        Array namespace of ``X``.
    total_weight : float, optional
        ``Σ s_i`` over the dataset, the normalisation (``n_global`` without weights).
    n_classes : int, optional
        K of a multinomial model (1: the vector ``[w_q, b]``).
    """

    splits_parameters = True

    def __init__(self, X, y, loss, comms, *, coords, n_global: int, d_global: int, col_range, l2: float,
                 fit_intercept: bool, xp, sample_weight=None, total_weight: float | None = None,
                 n_classes: int = 1):
        self.X, self.y, self.loss, self.xp = X, y, loss, xp
        self.sample_weight = sample_weight
        self.comm = comms
        self.p, self.q = coords
        self.n_global, self.d = int(n_global), int(d_global)
        self.normalizer = float(self.n_global if total_weight is None else total_weight)
        self.col_start, self.col_stop = col_range
        self.d_local = self.col_stop - self.col_start
        self.l2 = float(l2)
        self.fit_intercept = bool(fit_intercept)
        self.curvature = float(loss.curvature_bound)
        self.compute_seconds = 0.0
        n_local, dtype = X.shape[0], X.dtype
        K = self.n_classes = int(n_classes)
        self.n_coef = self.d_local * K          # the coefficients of this block; the K intercepts follow
        self.n_params = self.n_coef + K
        per_row = () if K == 1 else (K,)
        self._w = xp.zeros((self.d_local, *per_row), dtype=dtype)
        self._z = xp.empty((n_local, *per_row), dtype=dtype)
        self._work = xp.empty(n_local, dtype=dtype)
        # host: scratch to zero the subnormal row weights before the gradient product (pgd.local.subnormal)
        self._weights_work = None if xp is not np else (self._work if K == 1 else xp.empty_like(self._z))
        self._row_sum = xp.empty((self.d_local, *per_row), dtype=dtype)
        self._grad = xp.zeros(self.n_coef, dtype=xp.float64)
        self._scalars = np.zeros(K + 2)         # [intercept sums (K), loss, ‖w_q‖²]
        self._dot = np.zeros(1)
        self._max = np.zeros(1)
        self._abs = xp.empty(self.n_params, dtype=xp.float64)
        if K > 1:
            self._b = xp.empty(K, dtype=dtype)
            self._labels = labels_as_indices(y, K, xp)
            self._softmax = SoftmaxResiduals(n_local, K, dtype, xp)
            self._class_sums = np.zeros(K)

    def __getattr__(self, name):
        """Refuse, in one line on every rank, what an optimizer needs beyond the common interface
        (e.g. mini-batches over ``objective.local``)."""
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedInGrid(f"this optimizer needs objective.{name}, which --mode feature/hybrid does not "
                                f"provide; use --mode data", collective=True)

    def zeros(self):
        """Initial local parameters ``[w_q = 0, b = 0]`` (length ``(d_q + 1) K``)."""
        return self.xp.zeros(self.n_params, dtype=self.xp.float64)

    def _add_intercepts(self, params) -> None:
        """``z += b`` (the K intercepts broadcast over the rows of a multinomial model)."""
        if not self.fit_intercept:
            return
        if self.n_classes > 1:
            self._b[...] = params[self.n_coef:]
            self._z += self._b
            return
        offset = float(params[self.d_local])
        if offset != 0.0:
            self.xp.add(self._z, offset, out=self._z)

    def _intercept_sums(self) -> None:
        """``_scalars[:K] = Σ_rows r`` in float64 (multinomial: per class)."""
        if self.n_classes == 1:
            self._scalars[0] = sum64(self._z, self.xp)
            return
        self._class_sums[...] = host_copy_of(self.xp, self._z.sum(axis=0, dtype=self.xp.float64))
        self._scalars[:self.n_classes] = self._class_sums

    def _pass(self, params, transform) -> None:
        """``z = Σ_q X w_q + b``, ``r = transform(y, z, work, s)``, ``_grad = Σ_p Xᵀ r``, global scalars."""
        xp, nc, K = self.xp, self.n_coef, self.n_classes
        started = time.perf_counter()
        self._w[...] = params[:nc].reshape(self._w.shape)
        xp.dot(self.X, self._w, out=self._z)
        self.compute_seconds += time.perf_counter() - started
        _sum(self.comm.row, self._z)
        started = time.perf_counter()
        self._add_intercepts(params)
        scalar = transform(self.y, self._z, self._work, self.sample_weight)
        owner = self.q == 0  # the row group's replicas of r: counted once
        self._scalars[:K] = 0.0
        if owner and self.fit_intercept:
            self._intercept_sums()
        if self._weights_work is not None:
            zero_tiny_weights(self._z, self._weights_work, xp)   # the intercept sums keep them
        if K == 1:
            xp.dot(self._z, self.X, out=self._row_sum)
        else:
            xp.dot(self.X.T, self._z, out=self._row_sum)
        self._grad[...] = self._row_sum.reshape(-1)
        self._scalars[K] = scalar if owner else 0.0
        w = params[:nc]
        self._scalars[K + 1] = float(xp.dot(w, w)) if self.p == 0 and self.l2 else 0.0
        self.compute_seconds += time.perf_counter() - started
        _sum(self.comm.col, self._grad)
        _sum(self.comm.whole, self._scalars)
        self._grad /= self.normalizer

    def _residuals(self, y, z, work, s) -> float:
        """The loss's residuals in place of ``z``; the (weighted) loss sum."""
        if self.n_classes > 1:
            return self._softmax(z, self._labels, s)
        return self.loss.sum_and_derivative(y, z, work, self.xp, s)

    def value_and_grad(self, params, grad_out) -> float:
        """Global loss at the local ``params``; this rank's gradient block goes to ``grad_out``."""
        nc, K = self.n_coef, self.n_classes
        self._pass(params, self._residuals)
        grad_out[:nc] = self._grad
        grad_out[nc:] = self._scalars[:K] / self.normalizer
        value = float(self._scalars[K] / self.normalizer)
        if self.l2:
            grad_out[:nc] += self.l2 * params[:nc]
            value += 0.5 * self.l2 * float(self._scalars[K + 1])
        return value

    def dot(self, a, b) -> float:
        """Global inner product of two local parameter vectors (one scalar Allreduce over all ranks)."""
        nc = self.n_coef
        part = float(self.xp.dot(a[:nc], b[:nc])) if self.p == 0 else 0.0
        if self.p == 0 and self.q == 0:
            part += float(a[nc]) * float(b[nc]) if self.n_classes == 1 else float(self.xp.dot(a[nc:], b[nc:]))
        self._dot[0] = part
        _sum(self.comm.whole, self._dot)
        return float(self._dot[0])

    def sum_over_columns(self, partial) -> None:
        """In place: the sum over the column blocks of per-block K-vectors ``partial`` (e.g. ``Σ_j μ_j W_j``
        of the standardisation), counted from row group 0: one Allreduce of K numbers over all ranks, so every
        rank gets the same bits."""
        buffer = self._class_sums
        buffer[...] = host_copy_of(self.xp, partial) if self.p == 0 else 0.0
        _sum(self.comm.whole, buffer)
        partial[...] = self.xp.asarray(buffer)

    @property
    def l1_weights(self):
        """Per-coordinate L1 factors of a multinomial block (ones, 0 for the K intercepts); None for
        ``[w_q, b]``, whose optimizers exempt the last entry themselves."""
        if self.n_classes == 1:
            return None
        return coefficient_diagonal(self.xp, self.n_params, self.n_coef, 1.0)

    def column_moments(self):
        """``(Σs, mean, Σ s (x − mean)²)`` of this rank's columns over all rows (collective over the ranks
        sharing the columns; host float64)."""
        block_rows = max(1, (1 << 20) // max(1, self.d_local * self.X.itemsize))
        return column_moments(self.comm.col.mpi_comm, self.X, self.sample_weight, self.xp, block_rows)

    def norm_inf(self, v) -> float:
        """Global max-norm of a local parameter vector (one scalar Allreduce over all ranks)."""
        self.xp.abs(v, out=self._abs)
        self._max[0] = float(self._abs.max())
        self.comm.whole.mpi_comm.Allreduce(MPI.IN_PLACE, self._max, op=MPI.MAX)
        return float(self._max[0])

    def start_vector(self, seed: int):
        """The data-parallel start vector's slice (rows ``c0 .. c1`` and the intercept row of its ``(d + 1, K)``
        matrix), so both modes pick the same step."""
        K = self.n_classes
        full = np.random.default_rng(seed).standard_normal((self.d + 1) * K).reshape(self.d + 1, K)
        vector = self.xp.asarray(np.concatenate([full[self.col_start:self.col_stop].ravel(), full[self.d]]))
        if not self.fit_intercept:
            vector[self.n_coef:] = 0.0
        return vector

    def _weighted_direction(self, y, z, work, s) -> float:
        """Gram products: ``r = s u`` (``u`` itself without weights); no scalar."""
        if s is None:
            return 0.0
        if self.n_classes > 1:
            gram_weights(z, s, self.xp)
        else:
            self.xp.multiply(z, s, out=z)
        return 0.0

    def gram_product(self, params, out) -> None:
        """``out = X̃ᵀSX̃ params / Σs`` on this rank's parameter block."""
        self._pass(params, self._weighted_direction)
        out[:self.n_coef] = self._grad
        out[self.n_coef:] = self._scalars[:self.n_classes] / self.normalizer

    def lipschitz(self, power_iters: int, seed: int) -> float:
        """``L = λmax(c·X̃ᵀSX̃/Σs + λ·diag(1..1, 0))`` by power iteration with global norms."""
        penalty = coefficient_diagonal(self.xp, self.n_params, self.n_coef, self.l2) if self.l2 else None
        return curvature_bound(self, power_iters, seed, penalty)

    def full_params(self, params) -> np.ndarray:
        """The whole ``[w, b]`` (multinomial: the flat ``(d + 1, K)`` ``[W; b]``) as a host float64 vector on
        every rank (gathered over ``row_comm``)."""
        to_host = partial(host_copy_of, self.xp)
        host = np.ascontiguousarray(to_host(params), dtype=np.float64)
        row, K = self.comm.row.mpi_comm, self.n_classes
        sizes = [(stop - start) * K for start, stop in (block_range(self.d, row.Get_size(), k)
                                                         for k in range(row.Get_size()))]
        full = np.empty((self.d + 1) * K)
        coef = self.d * K
        row.Allgatherv(host[:self.n_coef], [full[:coef], sizes, np.cumsum([0] + sizes[:-1]), MPI.DOUBLE])
        full[coef:] = host[self.n_coef:]
        return full


def build_grid(cfg, world, backend):
    """Build the feature-parallel or hybrid objective: grid, sub-communicators, this rank's block.

    Returns
    -------
    (objective, slab)
    """
    size = world.Get_size()
    rows_p, cols_q = grid_shape(cfg.mode, cfg.grid, size)
    cart = world.Create_cart([rows_p, cols_q], periods=[False, False], reorder=False)
    p, q = cart.Get_coords(cart.Get_rank())
    row_comm, col_comm = cart.Sub([False, True]), cart.Sub([True, False])
    if sparse_collectively(world, cfg.data, x_key=cfg.x_key, locking=cfg.hdf5_locking):
        raise InputError(f"{cfg.data} is sparse (CSR, stored row after row): --mode {cfg.mode} would make every "
                         f"rank read every non-zero to find its columns; use --mode data, or convert it with "
                         f"`pgd data convert {cfg.data} DENSE.h5 --from h5 --to dense`", collective=True)
    meta = inspect_collectively(world, cfg.data, x_key=cfg.x_key, y_key=cfg.y_key, locking=cfg.hdf5_locking)
    widest = block_range(meta.d, cols_q, 0)[1]
    advice = chunk_advice(meta.chunks, meta.n, meta.d, widest, cfg.data) if cols_q > 1 else None
    if advice and world.Get_rank() == 0:
        print(advice, file=sys.stderr, flush=True)
    multinomial = cfg.loss == "multinomial"
    slab = load_block(world, cfg.data, rows=block_range(meta.n, rows_p, p), cols=block_range(meta.d, cols_q, q),
                      backend=backend, dtype=cfg.dtype, x_key=cfg.x_key, y_key=cfg.y_key,
                      locking=cfg.hdf5_locking, loss=cfg.loss, meta=meta, weight_key=cfg.weight_key,
                      class_weight=None if multinomial else cfg.class_weight)
    if multinomial:   # over the ranks sharing my columns, which together hold every row once
        slab.n_classes = prepare_classes(col_comm, slab, backend, requested=cfg.classes,
                                         class_weight=cfg.class_weight)
    comms = GridCommunicators(f"{cfg.comm} on a {rows_p}x{cols_q} grid", make_communicator(cfg.comm, row_comm),
                              make_communicator(cfg.comm, col_comm), make_communicator(cfg.comm, cart))
    objective = GridObjective(slab.X, slab.y, get_loss(cfg.loss), comms, coords=(p, q), n_global=meta.n,
                              d_global=meta.d, col_range=(slab.col_start, slab.col_stop), l2=cfg.l2,
                              fit_intercept=cfg.fit_intercept, xp=backend.xp, sample_weight=slab.weight,
                              total_weight=slab.total_weight, n_classes=getattr(slab, "n_classes", 1))
    return objective, slab
