"""Run configuration: every option is resolved as flag > ``PGD_*`` environment variable > default.

The option groups of the commands are declared once, in :mod:`pgd.cli.options`; this module holds what they
are built from and what a run reads: :func:`option` (with its environment variable), the parameter types,
:class:`RunConfig` and :func:`resolve`. Every option can also be set with an environment variable named after
the command and the option, so that no two commands share a variable: ``pgd train --some-name`` reads
``PGD_SOME_NAME`` (the main command keeps the short names), every other command ``PGD_<COMMAND>_<OPTION>``
(``pgd data generate --dtype``: ``PGD_DATA_GENERATE_DTYPE``; ``pgd predict --out``: ``PGD_PREDICT_OUT``).
:class:`RunConfig` keeps each value together with where it came from, and is stored in the model file.
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
