"""``pgd model show``: what a model file says about itself (the work is in :mod:`pgd.outputs.model_report`)."""

from __future__ import annotations

import click

from pgd.cli.common import JSON_OPTION, get_world, on_rank0, print_result
from pgd.config import option


@click.group()
def model():
    """Look at trained models."""


@model.command()
@click.argument("path", metavar="MODEL", type=click.Path(dir_okay=False))
@option("--top", type=click.IntRange(min=0), default=10,
        help="How many of the largest coefficients to list (per class for multinomial models).")
@JSON_OPTION
def show(path, top, as_json):
    """How MODEL was trained, whether and how it converged, its final and validation metrics, and its largest
    coefficients by magnitude (with the feature names when the data had them)."""
    from pgd.outputs.model_file import read_model  # noqa: PLC0415 - keeps `pgd --help` fast
    from pgd.outputs.model_report import format_model_report, model_report  # noqa: PLC0415

    world = get_world()
    report = on_rank0(world, lambda: model_report(read_model(path), top))
    print_result(world, report, as_json, format_model_report(report, path))
