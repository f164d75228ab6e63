"""The training loop: local gradient -> communicator -> optimizer step -> stop test -> outputs.

Every rank runs this function; only rank 0 writes files and prints. All decisions that end the loop
(convergence, divergence) are taken from globally reduced numbers, so every rank takes them together.

Convergence is decided by :mod:`pgd.optim.convergence`'s one optimality test; an unconverged run prints one
warning line (and fails with ``--require-convergence``).  A fixed-step method whose objective becomes
non-finite or rises far above its start has diverged: the run fails and writes no model.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import ExitStack

import numpy as np
from mpi4py import MPI

import pgd
from pgd.comm.host import collectively, max_over_ranks
from pgd.config import option_label
from pgd.errors import DivergedError, TrainingError
from pgd.fileio import atomic_path, check_writable, refuse_same_files
from pgd.optim import make_optimizer
from pgd.optim.convergence import DIVERGENCE_FACTOR, OptimalityTest, effective_tol, unconverged_warning
from pgd.outputs.checkpoint import ROTATION_LINKED, check_checkpoint_options, checkpoint_files, hold_checkpoint_lock
from pgd.outputs.model_file import save_run_model
from pgd.outputs.progress import Progress
from pgd.runtime import settings
from pgd.runtime.topology import mpi_library
from pgd.training.modes import pick_runner
from pgd.training.preempt import adopt_signal_flag, catch_signals_early, make_resilience_hook, release_early_signals
from pgd.training.setup import (
    bind_backend,
    blas_threads,
    build_objective,
    check_loss_options,
    describe_device,
    step_size,
)
from pgd.training.slow_rank import make_slow_rank_hook
from pgd.training.summary import peak_rss_bytes, print_summary, refuse_unconverged, timing_over_ranks
from pgd.training.validation import Validator, check_validation_options

#: Factories ``make_hook(cfg, world, optimizer) -> hook or None`` run by every training loop. A hook's
#: ``after_step(iteration) -> str | None`` is called on every rank after each step, and must return the
#: same value on every rank (a reason to stop, or None). Later features (checkpoints, signals, time
#: budgets) register here instead of editing the loop.
LOOP_HOOKS: list = [make_resilience_hook, make_slow_rank_hook]  # --slow-rank R:FACTOR (experiments)


def _check_outputs(world, cfg) -> None:
    """Rank 0 checks every output path now, not after training; all ranks fail together."""
    check_checkpoint_options(cfg)
    with collectively(world):
        if world.Get_rank() == 0:
            outputs = {option_label(cfg, "out"): cfg.out, option_label(cfg, "metrics"): cfg.metrics}
            if cfg.checkpoint:
                outputs.update(checkpoint_files(cfg.checkpoint))
            refuse_same_files({"the data file": cfg.data}, outputs, linked_by_design=ROTATION_LINKED)
            for path, what in ((cfg.out, "model file"), (cfg.metrics, "metrics file"),
                               (cfg.checkpoint, "checkpoint")):
                if path:
                    check_writable(path, what)


def _replicas_identical(world, params_host: np.ndarray) -> bool:
    """True when every rank holds exactly rank 0's bits."""
    reference = params_host.copy()
    world.Bcast(reference, root=0)
    same = np.array([int(np.array_equal(reference.view(np.uint64), params_host.view(np.uint64)))],
                    dtype=np.int64)
    world.Allreduce(MPI.IN_PLACE, same, op=MPI.MIN)
    return bool(same[0])


class _Recorder:
    """The history of evaluated iterates: model file, ``--metrics`` lines and the progress display; with a
    validator, the validation metrics of the iterates it validates (and ``validation_stop``, early stopping)."""

    def __init__(self, optimizer, metrics, progress, started: float, validator=None, objective=None):
        self.optimizer, self.metrics, self.progress, self.started = optimizer, metrics, progress, started
        self.validator, self.objective = validator, objective
        self.history = {"loss": [], "grad_norm": [], "optimality": [], "time": []}
        self.time_offset = 0.0  # a resumed run's history continues the time of the runs before
        self.validation_stop, self.last_validation = None, {}

    def resumed(self) -> None:
        """The history was restored from a checkpoint: continue its clock (and its optimality record)."""
        self.history.setdefault("optimality", [])
        if len(self.history["optimality"]) < len(self.history["loss"]):
            self.history["optimality"] = [math.nan] * len(self.history["loss"])
        self.time_offset = self.history["time"][-1] if self.history["time"] else 0.0

    def __call__(self, iteration: int) -> tuple[float, float]:
        """Record the current iterate; returns its ``(grad_norm, optimality)``."""
        optimizer = self.optimizer
        grad_norm, optimality = optimizer.grad_norm(), optimizer.optimality()
        elapsed = MPI.Wtime() - self.started + self.time_offset
        for key, value in (("loss", optimizer.loss), ("grad_norm", grad_norm), ("optimality", optimality),
                           ("time", elapsed)):
            self.history[key].append(value)
        line = {"iter": iteration, "loss": optimizer.loss, "grad_norm": grad_norm, "optimality": optimality,
                "time": elapsed}
        if self.validator is not None and self.validator.due(iteration):
            line.update(self.validate(iteration))
        self.metrics.write(line)
        self.progress.update(iteration, optimizer.loss, grad_norm)
        return grad_norm, optimality

    def validate(self, iteration: int) -> dict:
        """Validate the current iterate (collective); the progress lines show the result from now on."""
        found, self.validation_stop = self.validator.observe(
            iteration, self.objective.full_params(self.optimizer.params))
        self.last_validation = found
        self.progress.note = "  ".join(f"{key} {value:.6g}" for key, value in found.items())
        return found


class _MetricsWriter:
    """One JSON object per iterate, written by rank 0 to a temporary file renamed by :meth:`commit`.

    A failed write (disk full) stops the writing and is raised by :meth:`commit`, where every rank agrees
    on it, not in the middle of the loop on rank 0 alone.
    """

    def __init__(self, stack: ExitStack, path: str | None, enabled: bool):
        self.handle, self.failure = None, None
        self.files = stack.enter_context(ExitStack())  # undone (nothing written) unless committed
        if path and enabled:
            temporary = self.files.enter_context(atomic_path(path, "metrics file"))
            self.handle = self.files.enter_context(open(temporary, "w", encoding="utf-8"))

    def write(self, record: dict) -> None:
        if self.handle is not None and self.failure is None:
            try:
                self.handle.write(json.dumps(record) + "\n")
            except OSError as error:
                self.failure = error

    def commit(self) -> None:
        """Close the file and give it its name (or raise the failed write as one line)."""
        if self.failure is not None:
            with self.files:  # unwinding with the error discards the file and reports it in one line
                raise self.failure
        self.files.close()


def train(cfg, world=None) -> dict:
    """Train a model as configured; returns the run summary (same on every rank).

    Parameters
    ----------
    cfg : pgd.config.RunConfig
        Resolved options of ``pgd train`` (with ``data``, the dataset path).
    world : mpi4py.MPI.Comm, optional
        The ranks taking part (``COMM_WORLD`` by default).
    """
    world = world if world is not None else MPI.COMM_WORLD
    _check_outputs(world, cfg)
    with hold_checkpoint_lock(world, cfg.checkpoint):  # no other run uses the checkpoint while this one lives
        try:
            return _train(cfg, world)
        finally:
            release_early_signals()


def _train(cfg, world) -> dict:
    setup_started = MPI.Wtime()
    rank, size = world.Get_rank(), world.Get_size()
    backend, local_size = bind_backend(cfg, world)
    xp = backend.xp
    catch_signals_early()  # a SIGTERM/SIGUSR1 while the data loads stops the run at its first decision
    check_loss_options(cfg)
    check_validation_options(cfg)
    if (runner := pick_runner(cfg)) is not None:  # modes with loops of their own (async, shm, local SGD)
        return runner(cfg, world, backend)

    objective, slab, setup_facts, method = build_objective(cfg, world, backend)
    d = slab.meta.d
    validator = make_validator(cfg, world, slab, backend)
    lr, lr_auto, lipschitz = step_size(cfg, objective, method)
    facts = {
        "pgd_version": pgd.__version__, "data": os.path.abspath(cfg.data), "n": slab.n_global, "d": d,
        "loss": cfg.loss, "l2": cfg.l2, "fit_intercept": cfg.fit_intercept, "optimizer": method,
        "lr": lr, "lr_auto": lr_auto, "lipschitz": lipschitz, "ranks": size, "l1": cfg.l1, **setup_facts,
        "tol": cfg.tol, "tol_effective": effective_tol(cfg.tol, slab.dtype),
        "ranks_per_node": local_size, "device": describe_device(backend),
        "communicator": objective.comm.name, "dtype": str(slab.dtype),
        "blas_threads": blas_threads(),
        "cuda_aware": getattr(objective.comm, "cuda_aware", "no GPU" if not backend.is_gpu else "host staging"),
        "gradient_kernel": getattr(getattr(objective, "local", None), "kernel",
                                   "array expressions (no fused kernel for this mode or solver)"),
        "mpi_library": mpi_library(),
    }
    if cfg.dry_run:
        return _dry_run(cfg, world, slab, method, lr, facts)

    optimizer = make_optimizer(method, objective, xp=xp, lr=lr, cfg=cfg)
    budget = optimizer.budget(cfg.max_iter)
    hooks = [hook for make_hook in LOOP_HOOKS if (hook := make_hook(cfg, world, optimizer)) is not None]
    show = rank == 0 and not cfg.quiet
    progress = Progress(budget, enabled=show, log_every=cfg.log_every)
    check_every_step = settings.check_replicas()  # tests: bitwise replica check per step
    with ExitStack() as outputs:
        metrics = _MetricsWriter(outputs, cfg.metrics, rank == 0)
        for hook in hooks:  # hooks with close() (signal handlers) are undone however the loop ends
            if hasattr(hook, "close"):
                outputs.callback(hook.close)
        objective.comm.reset_counters()
        objective.compute_seconds = 0.0
        world.Barrier()
        started = MPI.Wtime()
        record = _Recorder(optimizer, metrics, progress, started, validator, objective)
        history = record.history

        # a hook with resume(history, data) may continue a checkpointed run (pgd.training.preempt)
        iteration, grad_norm, optimality = _start_or_resume(optimizer, objective, hooks, record, slab)
        start_loss = history["loss"][0]
        test = OptimalityTest.at_start(cfg.tol, slab.dtype, history["optimality"][0])
        stop_reason = _budget_reason(cfg.max_iter, budget)
        previous, first_iteration = optimizer.loss, iteration
        bytes_before = objective.comm.bytes  # bytes per iteration count this run's iterations only
        while True:
            if optimizer.fresh and test.stops_at(optimality):
                stop_reason = test.describe(optimality)
                break
            if iteration >= budget:
                break
            optimizer.step()
            if optimizer.stop_reason:
                stop_reason = optimizer.stop_reason
                break
            iteration += 1
            if check_every_step and not _replicas_identical(world, objective.full_params(optimizer.params)):
                raise TrainingError(f"ranks hold different weights after iteration {iteration}",
                                    collective=True)
            if optimizer.fresh:  # the full objective was evaluated at the new iterate (see pgd.optim)
                grad_norm, optimality = record(iteration)
                _check_divergence(optimizer, start_loss, iteration, grad_norm)
                if record.validation_stop:
                    stop_reason = record.validation_stop
                    break
                if cfg.rtol and abs(previous - optimizer.loss) <= cfg.rtol * abs(optimizer.loss):
                    stop_reason = f"relative loss change <= rtol {cfg.rtol:g}"
                    break
                previous = optimizer.loss
            hook_stop = next((reason for hook in hooks if (reason := hook.after_step(iteration))), None)
            if hook_stop:
                stop_reason = hook_stop
                break
        progress.finish(iteration, optimizer.loss, grad_norm)
        if optimizer.fixed_step and optimizer.loss > start_loss:
            raise DivergedError(f"the objective rose from {start_loss:.6g} to {optimizer.loss:.6g} in "
                                f"{iteration} iterations: --lr {lr:.3g} is too large (use --lr auto or "
                                f"--optimizer lbfgs); no model written", collective=True)
        converged = bool(optimizer.fresh and test.holds(optimality))
        wall = MPI.Wtime() - started
        compute, comm_seconds = objective.compute_seconds, objective.comm.seconds
        setup_max, rss_max = max_over_ranks(world, [started - setup_started, peak_rss_bytes()])
        split = timing_over_ranks(world, wall, compute, comm_seconds, iteration - first_iteration, setup_max)
        params = objective.full_params(optimizer.params)
        identical = _replicas_identical(world, params)
        validation_facts = {}
        if validator is not None:
            if optimizer.fresh and validator.last_iteration != iteration:   # the final iterate is validated too
                record.validate(iteration)
            params, validation_facts = validator.summary(params, record.last_validation)
        summary = dict(
            facts, **optimizer.summary(), iterations=iteration, evaluations=optimizer.evaluations,
            final_loss=optimizer.loss, grad_norm=grad_norm, **test.facts(optimality), converged=converged,
            stop_reason=stop_reason,
            replicas_identical=identical,
            replicas_checked="every iteration" if check_every_step else "at the end", out=cfg.out,
            metrics=cfg.metrics,
            comm_bytes_per_iteration=(objective.comm.bytes - bytes_before)
            // max(iteration - first_iteration, 1),
            timing=split,
            peak_rss_bytes=int(rss_max), **validation_facts)
        early_stopped = stop_reason.startswith("early stopping")
        summary["warnings"] = _warnings(optimizer, converged or early_stopped, test, optimality, iteration,
                                        stop_reason, method=method, dtype=slab.dtype,
                                        standardized=facts["standardize"] != "off")
        with collectively(world):  # a failed write (disk full) is one line on every rank
            if rank == 0 and cfg.out and (converged or not cfg.require_convergence):
                save_run_model(cfg, params, summary, history)
            metrics.commit()
    if rank == 0:
        print_summary(summary)
        if not identical:
            print("pgd: warning: ranks ended with different weights (non-deterministic reduction)",
                  flush=True)
    refuse_unconverged(cfg, converged, optimality, test.target, "no model written" if cfg.out else "nothing written")
    return summary


def make_validator(cfg, world, slab, backend):
    """The run's :class:`Validator` when it has validation rows, else None."""
    rows = getattr(slab, "validation", None)
    if rows is None:
        return None
    return Validator(rows, world, cfg.loss, slab.meta.d, getattr(slab, "n_classes", 1), backend.xp,
                     every=cfg.validate_every, patience=cfg.early_stopping)


def _budget_reason(max_iter: int, budget: int) -> str:
    """The stop reason of a run that used its whole budget (a method may count steps, not iterations)."""
    if budget != max_iter:
        return f"step budget reached ({budget} steps)"
    return f"iteration budget reached (--max-iter {max_iter})"


def _warnings(optimizer, converged: bool, test, optimality: float, iteration: int, stop_reason: str,
              **context) -> list[str]:
    """The summary's warnings: collinear columns (direct solvers) and an unconverged run's next step."""
    warnings = [getattr(optimizer, "collinear", None)]
    if not converged:
        warnings.append(unconverged_warning(test, optimality, iteration, stop_reason, **context))
    return [text for text in warnings if text]


def _dry_run(cfg, world, slab, method: str, lr: float, facts: dict) -> dict:
    """``--dry-run``: rank 0 says what would run; nothing is trained or written."""
    adopt_signal_flag().restore()
    rows = world.gather(slab.n_local)
    if world.Get_rank() == 0:
        print(f"pgd train --dry-run: data {cfg.data} ({slab.n_global} x {slab.meta.d}, {slab.meta.dtype}) is "
              f"valid; rows per rank {rows}; {cfg.loss} loss, {method}, lr {lr:.6g}; nothing trained, nothing "
              f"written", flush=True)
    return dict(facts, dry_run=True)


def _start_or_resume(optimizer, objective, hooks, record, slab) -> tuple[int, float, float]:
    """Continue a checkpointed run (a hook with ``resume(history, data)``, see :mod:`pgd.training.preempt`)
    or start at zero; returns ``(iteration, grad_norm, optimality)`` at the first iterate of this run."""
    resumed = [it for hook in hooks
               if hasattr(hook, "resume") and (it := hook.resume(record.history, slab)) is not None]
    if resumed:
        record.resumed()
        return resumed[0], optimizer.grad_norm(), optimizer.optimality()
    optimizer.start(objective.zeros())
    grad_norm, optimality = record(0)
    return 0, grad_norm, optimality


def _check_divergence(optimizer, start_loss: float, iteration: int, grad_norm: float) -> None:
    """Raise :class:`DivergedError` (on every rank: the numbers are global) when the objective is no longer
    finite, or a fixed-step method has taken it :data:`DIVERGENCE_FACTOR` times above its start."""
    loss = optimizer.loss
    blown_up = optimizer.fixed_step and loss - start_loss > DIVERGENCE_FACTOR * max(abs(start_loss), 1e-300)
    if math.isfinite(loss) and math.isfinite(grad_norm) and not blown_up:
        return
    hint = "use a smaller --lr, --lr auto or --optimizer lbfgs" if optimizer.fixed_step else "use --dtype float64"
    raise DivergedError(f"diverged at iteration {iteration} (loss {loss:.6g}, started at {start_loss:.6g}); "
                        f"{hint}; no model written", collective=True)
