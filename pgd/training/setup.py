"""One run's set-up, shared by ``pgd train``'s synchronous loop and the scaling benchmark's worker: the
backend bound to this rank's GPU, the objective in the optimizer's coordinates with the method that
minimises it, the step size, and the facts about the environment that summaries report.
"""

from __future__ import annotations

import math

from mpi4py import MPI

from pgd.device.backend import select_backend
from pgd.errors import InputError, TrainingError
from pgd.optim import OPTIMIZERS
from pgd.runtime import launcher
from pgd.runtime.topology import node_local_rank
from pgd.strategies import STRATEGIES
from pgd.strategies.data_parallel import build_data_parallel
from pgd.strategies.gram import csr_gram_hazard, reduce_gram, select_solver
from pgd.strategies.standardize import StandardizedObjective, describe, penalty_factors, scaling_for


def bind_backend(cfg, world):
    """``(backend, ranks on this node)``: ``--device`` resolved, the GPU bound from the node-local rank."""
    local_rank, local_size = node_local_rank(world)
    return select_backend(cfg.device, local_rank), local_size


def describe_device(backend) -> str:
    """``"cpu (numpy)"``, ``"gpu (cupy)"``: the device as summaries report it."""
    return f"{backend.device} ({backend.name})"


def blas_threads() -> str:
    """The BLAS threads of this rank and why (``"unknown"`` outside the ``pgd`` entry point)."""
    return launcher.BLAS_THREADS_RESOLVED or "unknown"


def check_loss_options(cfg) -> None:
    """Refuse, in one line on every rank, options that ``--loss`` does not support: multinomial runs only in
    the synchronous data, feature and hybrid modes with an iterative optimizer; ``--classes`` belongs to
    multinomial."""
    if cfg.loss != "multinomial":
        if cfg.classes:
            raise InputError("--classes needs --loss multinomial", collective=True)
        return
    if cfg.mode not in ("data", "feature", "hybrid") or cfg.sync_every:
        what = f"--mode {cfg.mode}" if cfg.mode not in ("data", "feature", "hybrid") else "--sync-every (local SGD)"
        raise InputError(f"{what} is not supported for multinomial (use --mode data, feature or hybrid)",
                         collective=True)
    if cfg.solver == "gram":
        raise InputError("--solver gram is not supported for multinomial (it solves squared loss; leave "
                         "--solver at auto)", collective=True)


def class_facts(slab) -> dict:
    """``n_classes`` (K) and ``classes``, the labels of classes 0 .. K-1: the data file's ``label_classes``
    (``pgd data convert --labels classes``) when it names K of them, else the integers."""
    mapped = slab.meta.attrs.get("label_classes")
    classes = list(mapped) if mapped is not None and len(mapped) == slab.n_classes else list(range(slab.n_classes))
    return {"n_classes": slab.n_classes, "classes": classes}


def exact_objective(cfg, world, backend, *, holds_data: bool = True):
    """This rank's data (``--mode``) and the run's objective over it, with the standardisation that
    ``--standardize``/``--penalty-scale`` ask for (one pass, collective; not yet applied).

    The asynchronous and shared-memory modes take the data-parallel objective as their exact objective (local
    SGD runs in ``--mode data``), with ``holds_data`` False on the ranks that hold no rows (parameter servers).

    Returns
    -------
    (objective, scaling, slab)
    """
    check_loss_options(cfg)
    strategy = STRATEGIES.get(cfg.mode)       # async and shm: the data-parallel objective
    if strategy is None:
        objective, slab = build_data_parallel(cfg, world, backend, holds_data=holds_data)
    else:
        objective, slab = strategy(cfg, world, backend)
    scaling = scaling_for(objective, standardize=cfg.standardize, fit_intercept=cfg.fit_intercept, l2=cfg.l2,
                          penalty_scale=cfg.penalty_scale)
    return objective, scaling, slab


def standardized(cfg, objective, scaling):
    """``objective`` in standardised coordinates (itself when ``scaling`` is the identity)."""
    if scaling.is_identity:
        return objective
    return StandardizedObjective(objective, scaling, l2=cfg.l2, penalty_scale=cfg.penalty_scale)


def build_objective(cfg, world, backend):
    """The run's objective in the optimizer's coordinates, and the method that minimises it.

    Loads this rank's data and computes the standardisation (:func:`exact_objective`), then applies
    ``--solver``: the Gram objective solved directly, or the (standardised) objective for ``--optimizer``.

    Returns
    -------
    (objective, slab, facts, method)
        ``facts`` describe the standardisation, weights and solver for the summary (and the classes of a
        multinomial model).
    """
    objective, scaling, slab = exact_objective(cfg, world, backend)
    use_gram, solver = select_solver(cfg, objective)
    if use_gram and cfg.solver == "auto" and (reason := csr_gram_hazard(objective, scaling)):
        use_gram, solver = False, f"iterative (auto: {reason})"
    if use_gram:
        started = MPI.Wtime()
        factors = penalty_factors(scaling, cfg.penalty_scale)
        objective = reduce_gram(objective, scaling, l2_diagonal=backend.xp.asarray(cfg.l2 * factors ** 2),
                                l1_weights=backend.xp.asarray(factors))
        solver += f"; XᵀX reduced once in {MPI.Wtime() - started:.3g} s"
        method = "cd" if cfg.l1 else "cholesky"
    else:
        objective = standardized(cfg, objective, scaling)
        method = "lbfgs" if cfg.optimizer in ("auto", None) else cfg.optimizer
    facts = {"standardize": describe(scaling, cfg.penalty_scale), "penalty_scale": cfg.penalty_scale,
             "sample_weight": slab.weight_source, "total_weight": slab.total_weight, "solver": solver}
    if getattr(slab.meta, "sparse", False):
        facts.update(data_format="csr", nnz=int(slab.meta.nnz))
    if cfg.loss == "multinomial":
        facts.update(class_facts(slab))
    return objective, slab, facts, method


def step_size(cfg, objective, method: str, *, method_default: bool = True) -> tuple[float, bool, float]:
    """``(lr, lr_auto, lipschitz)``: ``1/L`` from a power iteration with ``--lr auto`` for methods that need a
    step, the method's own default for those that do not, else ``--lr``.

    ``method_default=False`` (the scaling benchmark's rule) takes ``1/L`` for ``--lr auto`` whatever the method,
    so every timed method runs the same step.
    """
    lr_auto = cfg.lr == "auto" and (OPTIMIZERS[method].needs_lr or not method_default)
    lipschitz = objective.lipschitz(cfg.power_iters, cfg.seed) if lr_auto else math.nan
    if lr_auto and not lipschitz > 0:
        raise TrainingError("cannot pick a step size: the data matrix is zero; pass --lr", collective=True)
    lr = 1.0 / lipschitz if lr_auto else float(OPTIMIZERS[method].auto_lr if cfg.lr == "auto" else cfg.lr)
    return lr, lr_auto, lipschitz
