"""What the asynchronous modes share: a plain-SGD mini-batch worker step, the loss monitor, the run's end.

The modes ``async`` (:mod:`pgd.training.async_ps`), ``shm`` (:mod:`pgd.training.shm`) and local SGD
(:mod:`pgd.training.local_sgd`) run their own loops instead of :func:`pgd.training.sync.train`'s; each builds a
:class:`MiniBatchStepper` on the rows it holds, and ends with :func:`finish_run`, which computes the exact
final loss and gradient over all ranks, writes the model (rank 0) and prints the usual summary.

Conventions
-----------
- Parameters ``params = [w, b]`` are host float64 vectors of length ``d + 1`` (message buffers).
- A mini-batch gradient is the *mean* over the batch rows (weighted: ``(n/Σs)·mean(s_i ∇loss_i)``, an
  unbiased estimate) plus the penalty's gradient; the monitored objective is the full
  ``(1/Σs) Σ s_i loss_i + (λ/2)‖w‖²``.
- With ``--standardize`` (the default) the runners' parameters are standardised ``[v, c]``
  (:mod:`pgd.strategies.standardize`): :class:`MiniBatchStepper` maps them to the original ``[w, b]`` for
  its rows and its gradient back, both O(d); the model file gets the original coefficients.
- Update budget: ``--updates`` mini-batch updates summed over workers, capped by ``--epochs`` when that
  option exists and was given (``epochs · n / local_batch`` updates).
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from mpi4py import MPI

import pgd
from pgd.comm.host import collectively, max_over_ranks
from pgd.errors import DivergedError, TrainingError
from pgd.fileio import atomic_path
from pgd.loader.host import RowSlab
from pgd.optim.convergence import OptimalityTest, effective_tol, unconverged_warning
from pgd.outputs.model_file import save_run_model
from pgd.strategies.standardize import ColumnScaling, describe, penalty_factors
from pgd.training.preempt import Resilience
from pgd.training.setup import describe_device, exact_objective, standardized
from pgd.training.summary import print_summary, refuse_unconverged, timing_over_ranks


def update_budget(cfg, n_global: int) -> int:
    """Mini-batch updates to run in total (``--updates``, capped by a given ``--epochs``)."""
    budget = int(cfg.updates)
    epochs = cfg.epochs
    if epochs and cfg.sources.get("epochs") in ("flag", "env"):
        budget = min(budget, max(1, math.ceil(float(epochs) * n_global / cfg.local_batch)))
    return budget


def eval_interval(n_local: int, batch: int) -> int:
    """Steps between two full-loss evaluations of one rank: about four per pass over its rows."""
    return max(1, math.ceil(n_local / max(batch, 1)) // 4)


def slow_factor(cfg, rank: int) -> float:
    """How many times longer this rank's compute takes (``--slow-rank R:FACTOR``)."""
    slow = cfg.slow_rank
    return float(slow[1]) if slow and int(slow[0]) == rank else 1.0


def exact_loss(objective, params: np.ndarray) -> tuple[float, float, float]:
    """The global objective, its gradient's norm and its max-norm (the optimality measure) at host
    ``params`` (a collective over ``objective``)."""
    xp = objective.xp
    point = xp.asarray(params)
    gradient = xp.zeros_like(point)
    loss = objective.value_and_grad(point, gradient)
    return loss, math.sqrt(float(xp.dot(gradient, gradient))), objective.norm_inf(gradient)


def step_size(cfg, objective, writers: int = 1) -> tuple[float, float]:
    """``(lr, lipschitz)``: ``--lr``, or ``1/(L·writers)`` with L from power iterations (collective).

    ``writers`` ranks updating the same weights concurrently make each gradient up to about
    ``writers - 1`` updates stale; shrinking the automatic step by that factor keeps SGD stable.
    """
    if cfg.lr != "auto":
        return float(cfg.lr), math.nan
    lipschitz = objective.lipschitz(cfg.power_iters, cfg.seed)
    if not lipschitz > 0:
        raise TrainingError("cannot pick a step size: the data matrix is zero; pass --lr", collective=True)
    return 1.0 / (lipschitz * max(writers, 1)), lipschitz


class MiniBatchStepper:
    """Mini-batch gradients of one rank's rows (plain SGD worker step), with a simulated slowdown.

    Parameters
    ----------
    objective : DataParallelObjective
        Its ``local`` kernel holds this rank's rows.
    cfg : RunConfig
        ``local_batch``, ``l2``, ``seed`` and ``slow_rank`` are used.
    rank : int
        This rank (seeds its own shuffles; picks the slowdown).
    backend : pgd.device.backend.Backend
        Where the rows live.
    """

    def __init__(self, objective, cfg, rank: int, backend):
        self.local = objective.local
        self.backend = backend
        xp = backend.xp
        self.d = self.local.d
        self.l2 = float(cfg.l2)
        scaling = getattr(objective, "scaling", None)
        self.scaling = None if scaling is None else ColumnScaling(
            scaling.mean_host, scaling.scale_host, np, centred=scaling.centred)
        # the penalty's gradient in the runners' coordinates: λ·factor²·p (factor 1/σ, or 1 on v itself)
        factors = penalty_factors(self.scaling, cfg.penalty_scale) if self.scaling else np.append(
            np.ones(self.d), 0.0)
        self.penalty = self.l2 * factors * factors
        self.weighted = self.local.sample_weight is not None
        self.row_factor = objective.n_global / objective.normalizer   # n/Σs: unbiased weighted means
        self._original = np.zeros(self.d + 1)
        self._raw = np.zeros(self.d + 1)
        self.n_local = self.local.n_local
        self.batch = min(int(cfg.local_batch), self.n_local)
        self.factor = slow_factor(cfg, rank)
        self.rng = np.random.default_rng([int(cfg.seed) & 0xFFFFFFFF, rank])
        self.order = xp.asarray(self.rng.permutation(self.n_local))
        self.cursor = 0
        self.sums = xp.zeros(self.d + 2, dtype=xp.float64)
        self.w = xp.zeros(self.d, dtype=self.local.dtype)
        self.grad = np.zeros(self.d + 1)
        self.compute_seconds = 0.0

    def state_dict(self) -> dict:
        """The shuffle: generator state, the current permutation and the position in it."""
        return {"rng": self.rng.bit_generator.state, "order": self.backend.to_host(self.order),
                "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        """Continue the shuffle of :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
        self.order = self.backend.xp.asarray(np.asarray(state["order"], dtype=np.int64))
        self.cursor = int(state["cursor"])

    def _next_rows(self):
        if self.cursor + self.batch > self.n_local:
            self.order = self.backend.xp.asarray(self.rng.permutation(self.n_local))
            self.cursor = 0
        rows = self.order[self.cursor: self.cursor + self.batch]
        self.cursor += self.batch
        return rows

    def _timed(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        if self.factor > 1.0:
            time.sleep(elapsed * (self.factor - 1.0))
        self.compute_seconds += time.perf_counter() - started

    def _to_original(self, params: np.ndarray) -> np.ndarray:
        """The original ``[w, b]`` of the runners' ``params`` (themselves without standardisation)."""
        if self.scaling is None:
            return params
        self.scaling.to_original(params, self._original)
        return self._original

    def gradient(self, params: np.ndarray) -> np.ndarray:
        """Mean mini-batch gradient at ``params`` (plus the penalty's) into :attr:`grad`, which is returned."""
        started = time.perf_counter()
        if self.batch == 0:
            self.grad[:] = 0.0
        else:
            original = self._to_original(params)
            self.w[...] = self.backend.xp.asarray(original[: self.d])
            self.local.loss_gradient(self.w, float(original[self.d]), self.sums, rows=self._next_rows())
            raw = self._raw if self.scaling is not None else self.grad
            raw[:] = self.backend.to_host(self.sums[: self.d + 1])
            raw /= self.batch / self.row_factor if self.weighted else self.batch
            if self.scaling is not None:
                self.scaling.gradient_to_std(raw, self.grad)
        if self.l2:
            self.grad += self.penalty * params
        self._timed(started)
        return self.grad

    def objective_share(self, params: np.ndarray, n_global: int) -> float:
        """This rank's share of the full objective at ``params``: shares sum to the objective over ranks."""
        started = time.perf_counter()
        total = 0.0
        if self.n_local:
            original = self._to_original(params)
            self.w[...] = self.backend.xp.asarray(original[: self.d])
            self.local.loss_gradient(self.w, float(original[self.d]), self.sums)
            total = float(self.sums[self.d + 1])
        share = (total * self.row_factor / n_global
                 + 0.5 * float(self.penalty @ (params * params)) * self.n_local / n_global)
        self._timed(started)
        return share


class MiniBatchState:
    """What local SGD and ``--mode shm`` checkpoint: the weights, the steps taken, this rank's shuffle.

    The loop updates ``params`` in place and counts ``step``; a resumed run continues both.
    """

    def __init__(self, params: np.ndarray, stepper: MiniBatchStepper):
        self.params, self.stepper, self.step = params, stepper, 0

    def state_dict(self) -> dict:
        """Weights, step and shuffle (the shuffle differs by rank, so checkpoints keep one per rank)."""
        return {"params": np.array(self.params), "step": self.step, "stepper": self.stepper.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.params[:] = state["params"]
        self.step = int(state["step"])
        self.stepper.load_state_dict(state["stepper"])


def start_resilience(cfg, world, state, rows: RowSlab, monitor: LossMonitor | None, **options) -> Resilience:
    """The run's :class:`pgd.training.preempt.Resilience` over ``state``, bound to the monitored history (rank 0's
    goes into checkpoints); with ``--resume`` the state and the history continue from the checkpoint.
    A collective call; ``options`` go to :class:`pgd.training.preempt.Resilience` (``quiesce``).
    """
    resilience = Resilience(cfg, world, state, unit="update", **options)
    history = monitor.history if monitor is not None else {}
    if resilience.bind(history, rows) is not None and monitor is not None and history.get("time"):
        monitor.started -= history["time"][-1]  # times continue those of the runs before
    return resilience


class LossMonitor:
    """History of the monitored loss (rank 0 keeps it) and the ``--target-loss`` test."""

    def __init__(self, target: float | None):
        self.target = target
        self.started = MPI.Wtime()
        self.history = {"loss": [], "updates": [], "time": []}

    def record(self, loss: float, updates: int) -> bool:
        """Keep one point; True when the target loss is reached."""
        self.history["loss"].append(float(loss))
        self.history["updates"].append(float(updates))
        self.history["time"].append(MPI.Wtime() - self.started)
        return self.target is not None and loss <= self.target


def run_facts(cfg, world, backend, rows, lr: float, lipschitz: float, objective) -> dict:
    """The facts of a run that the summary and the model file report."""
    scaling = getattr(objective, "scaling", None)
    return {
        "pgd_version": pgd.__version__, "data": os.path.abspath(cfg.data), "n": rows.n_global,
        "d": rows.meta.d, "loss": cfg.loss, "l2": cfg.l2, "fit_intercept": cfg.fit_intercept,
        "optimizer": f"sgd (mini-batch {cfg.local_batch})", "lr": lr, "lr_auto": False,
        "lr_rule": "1/(L * concurrent writers)" if cfg.lr == "auto" else "--lr",
        "lipschitz": lipschitz, "ranks": world.Get_size(), "device": describe_device(backend),
        "dtype": str(rows.dtype), "mode": cfg.mode,
        "standardize": "off" if scaling is None else describe(scaling, cfg.penalty_scale),
        "penalty_scale": cfg.penalty_scale, "sample_weight": rows.weight_source,
        "total_weight": rows.total_weight, "tol": cfg.tol, "tol_effective": effective_tol(cfg.tol, rows.dtype),
    }


def prepare_run(cfg, world, backend, *, plan: str, holds_data: bool = True, writers: int = 1):
    """Load the rows and build the exact objective (the synchronous run's set-up,
    :func:`pgd.training.setup.exact_objective`), pick the step size; print the plan under ``--dry-run``.

    Returns
    -------
    (rows, objective, facts)
        ``facts["dry_run"]`` is True when nothing is to be trained.
    """
    objective, scaling, rows = exact_objective(cfg, world, backend, holds_data=holds_data)
    objective = standardized(cfg, objective, scaling)
    lr, lipschitz = step_size(cfg, objective, writers=writers)
    facts = run_facts(cfg, world, backend, rows, lr, lipschitz, objective)
    facts["start_loss"], _, facts["start_optimality"] = exact_loss(objective, np.zeros(rows.meta.d + 1))
    if cfg.dry_run:
        facts["dry_run"] = True
        if world.Get_rank() == 0:
            print(f"pgd train --dry-run: {plan}; data {cfg.data} ({rows.n_global} x {rows.meta.d}), "
                  f"lr {lr:.6g}; nothing trained, nothing written", flush=True)
    return rows, objective, facts


def _stat(world, value: float, op) -> float:
    return float(world.allreduce(float(value), op=op))


def finish_run(cfg, world, objective, params: np.ndarray, facts: dict, monitor: LossMonitor | None,
               stats: dict) -> dict:
    """Exact final loss and gradient, the summary on every rank; rank 0 writes the model and prints.

    Rank 0's summary also carries the loss ``history``; a configuration with ``silent`` set (the
    benchmarks) prints nothing.

    Parameters
    ----------
    params : ndarray, (d + 1,)
        Final weights, identical on every rank.
    monitor : LossMonitor or None
        Rank 0's monitor (its history goes to the model file and ``--metrics``).
    stats : dict
        This rank's ``updates``, ``wall``, ``compute``, ``wait``, ``stop_reason``, ``communicator``, and
        optionally ``staleness_max``/``staleness_sum``/``staleness_count``/``clock_gap_max``; combined
        over ranks here (collective).
    """
    rank = world.Get_rank()
    final_loss, grad_norm, optimality = exact_loss(objective, params)
    start_loss = facts["start_loss"]
    if not math.isfinite(final_loss) or final_loss > start_loss:
        raise DivergedError(f"diverged: the objective went from {start_loss:.6g} to {final_loss:.6g}; use a "
                            f"smaller --lr; no model written", collective=True)
    test = OptimalityTest.at_start(cfg.tol, facts["dtype"], facts["start_optimality"])
    wait, updates = max_over_ranks(world, [stats["wait"], stats["updates"]])
    updates = int(updates)
    summary = dict(
        facts, iterations=updates, updates=updates, final_loss=final_loss, grad_norm=grad_norm,
        **test.facts(optimality), converged=test.holds(optimality), stop_reason=stats["stop_reason"],
        communicator=stats["communicator"], wait_seconds=wait, out=cfg.out, metrics=cfg.metrics,
        comm_bytes_per_iteration=int(stats.get("bytes_per_update", 0)),
        timing=timing_over_ranks(world, stats["wall"], stats["compute"], stats["wait"], updates))
    if "staleness_count" in stats:
        count = _stat(world, stats["staleness_count"], MPI.SUM)
        summary["staleness_max"] = int(_stat(world, stats["staleness_max"], MPI.MAX))
        summary["staleness_mean"] = _stat(world, stats["staleness_sum"], MPI.SUM) / max(count, 1.0)
    if "clock_gap_max" in stats:
        summary["clock_gap_max"] = int(_stat(world, stats["clock_gap_max"], MPI.MAX))
        summary["staleness_bound"] = cfg.staleness
    summary["warnings"] = [] if summary["converged"] else [unconverged_warning(
        test, optimality, updates, stats["stop_reason"], method="sgd", dtype=facts["dtype"],
        standardized=facts["standardize"] != "off", budget_option="--updates")]
    original = objective.full_params(objective.xp.asarray(params))
    history = monitor.history if monitor is not None else {}
    with collectively(world):  # a failed write (disk full) is one line on every rank
        if rank == 0 and cfg.out and (summary["converged"] or not cfg.require_convergence):
            save_run_model(cfg, original, summary, history)
        if rank == 0 and cfg.metrics:
            with atomic_path(cfg.metrics, "metrics file") as temporary, \
                    open(temporary, "w", encoding="utf-8") as handle:
                for updates, loss, seconds in zip(*(history.get(key, []) for key in ("updates", "loss", "time"))):
                    handle.write(json.dumps({"updates": int(updates), "loss": loss, "time": seconds}) + "\n")
    if rank == 0:
        if not getattr(cfg, "silent", False):
            print_summary(summary)
        summary["history"] = history
    world.Barrier()
    refuse_unconverged(cfg, summary["converged"], optimality, test.target, "no model written")
    return summary
