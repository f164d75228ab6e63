"""The ``pgd`` command line: a thin layer over the modules that do the work (``pgd data …`` is
:mod:`pgd.cli.data`, ``pgd bench …`` :mod:`pgd.cli.bench`).

Heavy modules (and MPI initialisation) are imported inside the commands, so ``pgd --help`` is instant.
Every command is safe under ``mpirun``: files are written by rank 0 only, and errors are agreed on by
all ranks (see :mod:`pgd.cli.entry`).
"""

from __future__ import annotations

import click

from pgd import __version__
from pgd.cli.bench import bench
from pgd.cli.common import JSON_OPTION, echo_rank0, get_world, label, print_result
from pgd.cli.data import data
from pgd.cli.model import model
from pgd.cli.options import DATA_OPTIONS, WEIGHT_OPTION
from pgd.cli.train import train
from pgd.config import apply_options, option


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pgd")
def cli():
    """Parallel gradient descent for least-squares, logistic and multinomial models over MPI.

    Launch with `mpirun -n N pgd ...` or `srun pgd ...`; every rank reads only its slice of the data.
    """


@cli.command()
@JSON_OPTION
def info(as_json):
    """Versions, MPI library, ranks per node, GPUs and the CUDA-aware decision."""
    from pgd.cli.info import format_fields, gather_info  # noqa: PLC0415

    world = get_world()
    details = gather_info(world)
    print_result(world, details, as_json, format_fields(details))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@apply_options(DATA_OPTIONS + [WEIGHT_OPTION])
@JSON_OPTION
def evaluate(model, data, x_key, y_key, hdf5_locking, weight_key, as_json):
    """Metrics of MODEL on DATA: MSE, RMSE, MAE, R² (squared); log-loss, accuracy, ROC AUC (logistic); log-loss,
    accuracy, macro-F1, confusion matrix (multinomial).
    Weighted when DATA has sample weights."""
    from pgd.cli.info import format_fields  # noqa: PLC0415
    from pgd.evaluation.apply import evaluate_model  # noqa: PLC0415

    world = get_world()
    result = evaluate_model(world, model, data, x_key=x_key, y_key=y_key, locking=hdf5_locking,
                            weight_key=weight_key)
    print_result(world, result, as_json, format_fields(result))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@option("--out", type=click.Path(dir_okay=False), required=True, help="Predictions file.")
@option("--format", "fmt", type=click.Choice(["h5", "csv", "npy"]), default="h5",
        help="h5: one dataset per column; csv: a header line and one row per data row; npy: one (n, columns) "
             "float64 matrix in the CSV header's column order.")
@option("--threshold", type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True), default=None,
        help="Binary (logistic) models: label 1 where the probability of class 1 is at least this [default: 0.5].")
@apply_options(DATA_OPTIONS)
@click.pass_context
def predict(ctx, model, data, out, fmt, threshold, x_key, y_key, hdf5_locking):
    """Write predictions of MODEL for DATA: the prediction (squared), probability of class 1, score and label
    (logistic), or label (class index), K probabilities and K scores (multinomial)."""
    from pgd.evaluation.apply import predict_model  # noqa: PLC0415

    world = get_world()
    result = predict_model(world, model, data, out, x_key=x_key, y_key=y_key, locking=hdf5_locking,
                           out_label=label(ctx, "out", out), fmt=fmt, threshold=threshold)
    echo_rank0(world, f"wrote {result['out']}: {', '.join(result['columns'])} for {result['n']} rows")


cli.add_command(data)
cli.add_command(train)
cli.add_command(bench)
cli.add_command(model)
