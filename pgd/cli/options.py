"""The option groups of ``pgd train`` and the other commands, declared once (rasterio style) and reused by
the commands of :mod:`pgd.cli`; their defaults are the defaults of a run (:func:`train_config` reads them too).

The ``--loss`` and ``--optimizer`` choices come from the registries of the code that implements them
(:data:`pgd.local.losses.LOSSES`, :data:`pgd.optim.ITERATIVE`), loaded when a command parses its options
or shows its help, so ``pgd --help`` stays fast; ``--mode`` and ``--comm`` name code that starts MPI when
imported, so their lists are checked against :data:`pgd.strategies.STRATEGIES`,
:data:`pgd.training.modes.RUNNERS` and the communicators by ``tests/unit/test_registries.py``.
"""

from __future__ import annotations

import click

from pgd.config import (
    FINITE_FLOAT,
    NONNEG_FLOAT,
    SEED,
    Duration,
    FiniteFloatRange,
    LearningRate,
    RunConfig,
    SlowRank,
    Staleness,
    apply_options,
    option,
)


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` whose names come from a registry, read on first use (not at import)."""

    def __init__(self, names, case_sensitive: bool = True):
        self._names, self._loaded = names, None
        super().__init__((), case_sensitive=case_sensitive)

    @property
    def choices(self):
        if self._loaded is None:
            self._loaded = tuple(self._names())
        return self._loaded

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ assigns the (empty) tuple it was given
        pass


def loss_names() -> list[str]:
    """``--loss`` choices: :data:`pgd.local.losses.LOSSES`."""
    from pgd.local.losses import LOSSES  # noqa: PLC0415 - read when parsed, so `pgd --help` stays fast

    return list(LOSSES)


def optimizer_names() -> list[str]:
    """``--optimizer`` choices: ``auto`` and :data:`pgd.optim.ITERATIVE` (the Gram solvers are ``--solver``'s)."""
    from pgd.optim import ITERATIVE  # noqa: PLC0415 - read when parsed (imports NumPy), so `pgd --help` stays fast

    return ["auto", *ITERATIVE]


DATA_OPTIONS = [
    option("--x-key", default="X", help="HDF5 dataset holding the features."),
    option("--y-key", default="y", help="HDF5 dataset holding the labels."),
    option("--hdf5-locking", type=click.Choice(["true", "false", "best-effort"]), default="best-effort",
           help="HDF5 file locking; 'false' on NFS/Lustre without lock support."),
]

#: Sample weights (train and evaluate).
WEIGHT_OPTION = option("--weight-key", default="sample_weight",
                       help="HDF5 dataset of per-row sample weights, used when the file has it ('' to ignore).")

COMPUTE_OPTIONS = [
    option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
           help="Where the data and the arithmetic live; auto takes a GPU when CuPy finds one."),
    option("--dtype", type=click.Choice(["auto", "float32", "float64"]), default="auto",
           help="Compute dtype; auto keeps the file's float type (float64 for integer data)."),
    option("--block-bytes", type=click.IntRange(min=1024), default=1 << 20,
           help="Rows are processed in blocks of about this many bytes, to stay in cache."),
    CUDA_AWARE_OPTION := option(
        "--cuda-aware", type=click.Choice(["auto", "on", "off"]), default="auto",
        help="Hand device buffers to MPI directly (on), stage through pinned host memory (off), or decide "
             "from vendor probes plus a checksum Allreduce (auto)."),
]

MODEL_OPTIONS = [
    option("--loss", type=RegistryChoice(loss_names), required=True,
           help="squared: ½(ŷ−y)²; logistic: labels in {0,1}; multinomial: softmax cross-entropy, labels "
                "0..K−1 (data mode)."),
    option("--classes", type=click.IntRange(min=2), default=None,
           help="multinomial: the number of classes K (default: the largest label + 1)."),
    option("--l2", type=NONNEG_FLOAT, default=0.0, help="L2 penalty λ in (λ/2)‖w‖²."),
    option("--l1", type=NONNEG_FLOAT, default=0.0,
           help="L1 penalty α in α‖w‖₁ (with --l2: elastic net); proximal steps with gd (ISTA), nesterov "
                "(FISTA), sgd, lbfgs (OWL-QN) or coordinate descent (--solver gram)."),
    option("--fit-intercept/--no-fit-intercept", default=True, help="Fit an unpenalised intercept."),
    option("--standardize/--no-standardize", default=True,
           help="Optimise in standardised coordinates (column means and scales from one pass; the data is "
                "not copied). Changes how fast pgd reaches the optimum, not which one."),
    option("--penalty-scale", type=click.Choice(["original", "standardized"]), default="original",
           help="Coefficients the penalties apply to: original w (the objective as documented) or the "
                "standardised ones (glmnet/Spark convention; changes the optimum)."),
    option("--class-weight", default=None, metavar="balanced|W0,W1[,...]",
           help="logistic/multinomial: weight rows by class (balanced: n / (K n_class); or one weight per class), "
                "times any sample weights."),
]

#: Options of the individual optimizers (pgd.optim.methods, pgd.optim.sgd) and of the Gram solver.
OPTIMIZER_METHOD_OPTIONS = [
    option("--line-search/--no-line-search", default=False,
           help="gd: Armijo backtracking on the global loss, starting from --lr."),
    option("--momentum", type=FiniteFloatRange(min=0.0, max=1.0, max_open=True), default=0.9,
           help="momentum: heavy-ball coefficient β."),
    option("--beta1", type=FiniteFloatRange(min=0.0, max=1.0, max_open=True), default=0.9,
           help="adam: decay of the first-moment average."),
    option("--beta2", type=FiniteFloatRange(min=0.0, max=1.0, max_open=True), default=0.999,
           help="adam: decay of the second-moment average."),
    option("--eps", type=FiniteFloatRange(min=0.0, min_open=True), default=1e-8, help="adam: denominator guard."),
    option("--batch-size", type=click.IntRange(min=1), default=256,
           help="sgd: global mini-batch (split across ranks in proportion to their rows)."),
    option("--epochs", type=click.IntRange(min=0), default=0,
           help="sgd: passes over the data (0: --max-iter mini-batch steps)."),
    option("--schedule", type=click.Choice(["constant", "inverse-time", "cosine"]), default="constant",
           help="sgd: step size per step t: lr, lr/(1+t/steps_per_epoch), or lr·½(1+cos(πt/T))."),
    option("--memory", type=click.IntRange(min=1), default=10, help="lbfgs: curvature pairs kept."),
    option("--solver", type=click.Choice(["iterative", "gram", "auto"]), default="auto",
           help="squared loss: gram reduces XᵀX once and solves the normal equations (Cholesky; coordinate "
                "descent with --l1); auto takes it when it is cheaper than iterating."),
]

OPTIMIZER_OPTIONS = [
    option("--optimizer", type=RegistryChoice(optimizer_names),
           default="auto", help="Optimisation method (see docs/optimizers.md); auto: lbfgs (OWL-QN with --l1)."),
    option("--lr", type=LearningRate(), default="auto",
           help="Step size; auto = 1/L with L from distributed power iterations."),
    option("--max-iter", type=click.IntRange(min=0), default=1000, help="Iteration budget."),
    option("--tol", type=NONNEG_FLOAT, default=1e-6,
           help="Converged when ‖∇F‖∞ ≤ tol·max(1, ‖∇F(start)‖∞) in the optimizer's coordinates "
                "(never below the data dtype's rounding floor); 0: never stop on it."),
    option("--rtol", type=NONNEG_FLOAT, default=1e-12,
           help="Stop when |f_k − f_(k−1)| ≤ rtol·|f_k| (0 disables); a stop, not a claim of convergence."),
    option("--require-convergence", is_flag=True, default=False,
           help="Exit with status 3 (and write no model) when the run ends unconverged."),
    option("--power-iters", type=click.IntRange(min=1), default=30,
           help="Power iterations used to estimate L for --lr auto."),
    option("--seed", type=SEED, default=0, help="Seed for every random choice of the run."),
] + OPTIMIZER_METHOD_OPTIONS

PARALLEL_OPTIONS = [
    option("--mode", type=click.Choice(["data", "feature", "hybrid", "async", "shm"]), default="data",
           help="data: rows split over ranks, gradients summed every step; feature: columns split, "
                "partial predictions summed; hybrid: a PxQ grid of row and column blocks; async: parameter "
                "server(s) and workers (--servers, --staleness); shm: Hogwild on a node-shared weight vector."),
    option("--grid", default=None, metavar="PxQ",
           help="hybrid: P row groups x Q column groups (P*Q = ranks); default MPI.Compute_dims."),
    option("--comm", type=click.Choice(["allreduce", "reduce-bcast", "nccl"]), default="allreduce",
           help="How ranks combine gradients (nccl: GPU only, one rank per GPU)."),
]

ASYNC_OPTIONS = [
    option("--servers", type=click.IntRange(min=1), default=1,
           help="async: server ranks (0..k-1) holding the weights in shards; the other ranks are workers."),
    option("--staleness", type=Staleness(), default="none",
           help="async: a worker may run at most s steps ahead of the slowest (SSP); 0 ~ synchronous, "
                "none = fully asynchronous."),
    option("--sync-every", type=click.IntRange(min=0), default=0,
           help="data: local SGD, ranks step alone and average weights every k steps (0: off); "
                "shm: average the node copies every k steps."),
    option("--updates", type=click.IntRange(min=1), default=2000,
           help="async/shm/local SGD: budget of mini-batch updates, summed over workers."),
    option("--local-batch", type=click.IntRange(min=1), default=256,
           help="async/shm/local SGD: rows of a worker's mini-batch."),
    option("--target-loss", type=FINITE_FLOAT, default=None,
           help="async/shm/local SGD: stop once the (monitored) loss is at or below this value."),
    option("--slow-rank", type=SlowRank(), default=None,
           help="Experiments: rank R's compute takes FACTOR times longer (R:FACTOR)."),
]

OUTPUT_OPTIONS = [
    option("--out", type=click.Path(dir_okay=False), default=None, help="Model file to write (HDF5)."),
    option("--metrics", type=click.Path(dir_okay=False), default=None,
           help="Write one JSON object per iteration to this file."),
    option("--quiet", is_flag=True, default=False, help="Only the final summary."),
    option("--log-every", type=click.IntRange(min=0), default=0,
           help="Log line every K iterations when not on a terminal (0: about 10 lines), and every 10 s."),
    option("--dry-run", is_flag=True, default=False,
           help="Validate data and options, show the plan, train nothing."),
]


VALIDATION_OPTIONS = [
    option("--validation", type=click.Path(dir_okay=False), default=None,
           help="Validation data (same format): its loss and metric every --validate-every iterations."),
    option("--validation-fraction", type=FiniteFloatRange(min=0.0, max=1.0, min_open=True, max_open=True),
           default=None, help="Hold out this share of the training rows for validation (seeded by --seed; the "
                              "same rows whatever the rank count)."),
    option("--validate-every", type=click.IntRange(min=1), default=10,
           help="Validate every K iterations (and the last iterate)."),
    option("--early-stopping", type=click.IntRange(min=0), default=0,
           help="Stop after P validations without a lower validation loss and keep the best weights (0: off)."),
]

CHECKPOINT_OPTIONS = [
    option("--checkpoint", type=click.Path(dir_okay=False), default=None,
           help="Checkpoint file (the one before is kept as PATH.prev)."),
    option("--checkpoint-every", type=click.IntRange(min=0), default=0,
           help="Write a checkpoint every K iterations (0: only when stopped early)."),
    option("--checkpoint-seconds", type=FiniteFloatRange(min=0.0), default=0.0,
           help="Write a checkpoint every S seconds of wall time (0: off)."),
    option("--resume", is_flag=True, default=False,
           help="Continue from the newest valid checkpoint at --checkpoint (start anew if none)."),
    option("--max-time", type=Duration(), default=None,
           help="Wall-clock budget: checkpoint and stop (exit 75) before it runs out."),
]

TRAIN_OPTIONS = (DATA_OPTIONS + [WEIGHT_OPTION] + COMPUTE_OPTIONS + MODEL_OPTIONS + OPTIMIZER_OPTIONS + PARALLEL_OPTIONS
                 + ASYNC_OPTIONS + VALIDATION_OPTIONS + OUTPUT_OPTIONS + CHECKPOINT_OPTIONS)


def train_config(**values) -> RunConfig:
    """A :class:`RunConfig` for :func:`pgd.training.sync.train` (Python API): the defaults of every ``pgd train``
    option (environment variables ignored), overridden by ``values`` (which must include ``data`` and
    ``loss``)."""
    command = click.command()(apply_options(TRAIN_OPTIONS)(lambda **kwargs: None))
    defaults = {param.name: param.default for param in command.params}
    unknown = set(values) - set(defaults) - {"data"}
    if unknown:
        raise TypeError(f"unknown pgd train options: {', '.join(sorted(unknown))}")
    return RunConfig(dict(defaults, **values), {name: "flag" for name in values})
