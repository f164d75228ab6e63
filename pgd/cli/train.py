"""``pgd train``: one training run (the work is in :mod:`pgd.training`)."""

from __future__ import annotations

import click

from pgd.cli.common import get_world
from pgd.cli.options import TRAIN_OPTIONS
from pgd.config import apply_options, resolve


@click.command()
@click.argument("data", type=click.Path(dir_okay=False))
@apply_options(TRAIN_OPTIONS)
@click.pass_context
def train(ctx, **values):
    """Fit a least-squares or logistic model to DATA (HDF5) with parallel gradient descent.

    Objective: (1/n) Σ loss(y_i, x_i·w + b) + (λ/2)‖w‖², intercept unpenalised.
    """
    from pgd.training.sync import train as run_training  # noqa: PLC0415

    run_training(resolve(ctx, values), get_world())
