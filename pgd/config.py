"""Run configuration: every option is resolved as flag > ``PGD_*`` environment variable > default.

Options are declared once here, in groups, and reused by the commands of :mod:`pgd.cli.app` (rasterio
style). Every option can also be set with an environment variable named after the command and the option,
so that no two commands share a variable: ``pgd train --some-name`` reads ``PGD_SOME_NAME`` (the main
command keeps the short names), every other command ``PGD_<COMMAND>_<OPTION>`` (``pgd data generate
--dtype``: ``PGD_DATA_GENERATE_DTYPE``; ``pgd predict --out``: ``PGD_PREDICT_OUT``). :class:`RunConfig`
keeps each value together with where it came from, and is stored in the model file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import click
from click.core import ParameterSource

#: The command whose variables are ``PGD_<OPTION>`` without the command's name.
MAIN_COMMAND = ("train",)


def envvar_for(name: str, command: tuple = MAIN_COMMAND) -> str:
    """The environment variable of option ``--name`` of ``command``: ``max_iter`` -> ``PGD_MAX_ITER``;
    ``("data", "generate")``, ``dtype`` -> ``PGD_DATA_GENERATE_DTYPE``."""
    scope = () if tuple(command) == MAIN_COMMAND else tuple(command)
    return "_".join(("PGD", *scope, name)).upper().replace("-", "_")


def command_of(ctx: click.Context) -> tuple:
    """The subcommand names leading to ``ctx`` (``("data", "generate")``), without the program name."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return tuple(reversed(names))


class EnvOption(click.Option):
    """A click option whose environment variable is :func:`envvar_for` of its command and long flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.flag_name = max((o for o in self.opts if o.startswith("--")), key=len).lstrip("-")

    def _bind_envvar(self, ctx: click.Context) -> None:
        if self.envvar is None:
            self.envvar = envvar_for(self.flag_name, command_of(ctx))

    def resolve_envvar_value(self, ctx):
        self._bind_envvar(ctx)
        return super().resolve_envvar_value(ctx)

    def get_help_extra(self, ctx):
        self._bind_envvar(ctx)
        return super().get_help_extra(ctx)


def option(*decls, **attrs):
    """A click option with its environment variable (shown in ``--help``; see :class:`EnvOption`)."""
    attrs.setdefault("cls", EnvOption)
    attrs.setdefault("show_envvar", True)
    attrs.setdefault("show_default", True)
    return click.option(*decls, **attrs)


def apply_options(options):
    """Decorator applying a list of click options in the order they are listed."""

    def decorate(function):
        for opt in reversed(options):
            function = opt(function)
        return function

    return decorate


class LearningRate(click.ParamType):
    """``auto`` or a positive float."""

    name = "auto|FLOAT"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            rate = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if not rate > 0 or rate != rate or rate == float("inf"):
            self.fail(f"{value!r} must be a positive finite number", param, ctx)
        return rate


class FiniteFloatRange(click.FloatRange):
    """A float in an (optional) range that is also finite: NaN and ±Inf are refused in one line."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


DTYPE = click.Choice(["float32", "float64"])
FINITE_FLOAT = FiniteFloatRange()
NONNEG_FLOAT = FiniteFloatRange(min=0.0)
SEED = click.IntRange(min=0)

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
    option("--loss", type=click.Choice(["squared", "logistic"]), required=True,
           help="squared: ½(ŷ−y)²; logistic: labels in {0,1}."),
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
    option("--class-weight", default=None, metavar="balanced|W0,W1",
           help="logistic: weight rows of class 0 and 1 (balanced: n / (2 n_class)), times any sample weights."),
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
    option("--optimizer", type=click.Choice(["auto", "gd", "momentum", "nesterov", "adam", "sgd", "lbfgs"]),
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

class SlowRank(click.ParamType):
    """``R:FACTOR``: rank R's compute takes FACTOR (>= 1) times longer."""

    name = "R:FACTOR"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        try:
            rank_text, factor_text = str(value).split(":")
            rank, factor = int(rank_text), float(factor_text)
        except ValueError:
            self.fail(f"{value!r} is not R:FACTOR (for example 1:4)", param, ctx)
        if rank < 0 or not factor >= 1 or factor == float("inf"):
            self.fail(f"{value!r}: R must be >= 0 and FACTOR a finite number >= 1", param, ctx)
        return rank, factor


class Staleness(click.ParamType):
    """``none`` (fully asynchronous) or a bound s >= 0."""

    name = "none|INT"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int) or value == "none":
            return value
        try:
            bound = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'none' nor an integer", param, ctx)
        if bound < 0:
            self.fail(f"{value!r} must be >= 0", param, ctx)
        return bound


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


def parse_duration(text) -> float:
    """Seconds from ``S``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (SLURM's time format)."""
    text = str(text).strip()
    days = 0
    if "-" in text[1:]:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [float(part) for part in text.split(":")]
    if len(parts) > 3 or days < 0 or any(not math.isfinite(p) or p < 0 for p in parts):
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


class Duration(click.ParamType):
    """Seconds as ``S``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (SLURM's format); positive."""

    name = "SECONDS|[D-]HH:MM:SS"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a duration (seconds or [D-]HH:MM:SS)", param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r} must be a positive duration", param, ctx)
        return seconds


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
                 + ASYNC_OPTIONS + OUTPUT_OPTIONS + CHECKPOINT_OPTIONS)


@dataclass
class RunConfig:
    """Resolved option values and where each came from (``flag``, ``env`` or ``default``)."""

    values: dict
    sources: dict = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_json(self) -> str:
        """The values and their sources as one JSON document."""
        return json.dumps({"values": self.values, "sources": self.sources}, sort_keys=True, default=str)

    def replace(self, **changes) -> "RunConfig":
        """A copy with some values changed (marked as source ``derived``)."""
        values = dict(self.values, **changes)
        sources = dict(self.sources, **{name: "derived" for name in changes})
        return RunConfig(values, sources)


_SOURCE_NAMES = {
    ParameterSource.COMMANDLINE: "flag",
    ParameterSource.ENVIRONMENT: "env",
    ParameterSource.DEFAULT: "default",
    ParameterSource.DEFAULT_MAP: "default",
}


def resolve(ctx: click.Context, values: dict) -> RunConfig:
    """Wrap a command's keyword arguments into a :class:`RunConfig` with their sources."""
    sources = {name: _SOURCE_NAMES.get(ctx.get_parameter_source(name), "default") for name in values}
    return RunConfig(dict(values), sources)


def option_label(cfg: RunConfig, name: str, command: tuple = MAIN_COMMAND) -> str:
    """``--name`` for messages, with the variable that set it when it came from the environment."""
    flag = "--" + name.replace("_", "-")
    if cfg.sources.get(name) == "env":
        return f"{flag} (from {envvar_for(flag[2:], command)})"
    return flag


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
