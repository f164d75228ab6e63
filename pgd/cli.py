"""The ``pgd`` command line: a thin layer over the modules that do the work.

Heavy modules (and MPI initialisation) are imported inside the commands, so ``pgd --help`` is instant.
Every command is safe under ``mpirun``: files are written by rank 0 only, and errors are agreed on by
all ranks (see :mod:`pgd.launch`).
"""

from __future__ import annotations

import json

import click

from pgd import __version__
from pgd.config import (DATA_OPTIONS, DTYPE, TRAIN_OPTIONS, apply_options, option, resolve)


def _world():
    from mpi4py import MPI  # noqa: PLC0415 - MPI starts only when a command needs it

    return MPI.COMM_WORLD


def _echo_rank0(world, text: str) -> None:
    if world.Get_rank() == 0:
        click.echo(text)


def _on_rank0(world, work):
    """Run ``work()`` on rank 0 only (file writers); every rank gets its result or its error."""
    from pgd.comm import collectively  # noqa: PLC0415

    result = None
    with collectively(world):
        if world.Get_rank() == 0:
            result = work()
    return world.bcast(result, root=0)


def _print_result(world, result: dict, as_json: bool, text: str) -> None:
    _echo_rank0(world, json.dumps(result, indent=2, default=str) if as_json else text)


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pgd")
def cli():
    """Parallel gradient descent for least-squares and logistic models over MPI.

    Launch with `mpirun -n N pgd ...` or `srun pgd ...`; every rank reads only its slice of the data.
    """


@cli.command()
@JSON_OPTION
def info(as_json):
    """Versions, MPI library, ranks per node, GPUs and the CUDA-aware decision."""
    from pgd.info import format_info, gather_info  # noqa: PLC0415

    world = _world()
    details = gather_info(world)
    _print_result(world, details, as_json, format_info(details) if not as_json else "")


@cli.group()
def data():
    """Make, convert and inspect datasets in pgd's HDF5 format."""


@data.command("generate")
@click.argument("out", type=click.Path(dir_okay=False))
@option("--task", type=click.Choice(["regression", "binary"]), default="regression",
        help="regression: y = Xw + b + noise; binary: y ~ Bernoulli(sigmoid(Xw + b)).")
@option("--n", "n", type=click.IntRange(min=1), required=True, help="Rows.")
@option("--d", "d", type=click.IntRange(min=1), required=True, help="Columns.")
@option("--seed", type=int, default=0, help="Random seed.")
@option("--dtype", type=DTYPE, default="float32", help="Stored float type.")
@option("--noise", type=click.FloatRange(min=0.0), default=0.1, help="Noise level (see README).")
@option("--chunk-rows", type=click.IntRange(min=1), default=None, help="HDF5 chunk rows (default ≈1 MiB).")
def data_generate(out, task, n, d, seed, dtype, noise, chunk_rows):
    """Write a synthetic dataset with known true weights, block by block (bounded memory)."""
    from pgd.data import generate_dataset  # noqa: PLC0415

    world = _world()
    summary = _on_rank0(world, lambda: generate_dataset(out, task, n, d, seed=seed, dtype=dtype,
                                                        noise=noise, chunk_rows=chunk_rows))
    _echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']} {summary['dtype']} ({task}), "
                       f"chunks {tuple(summary['chunks'])}")


@data.command("convert")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@option("--from", "fmt", type=click.Choice(["csv", "npy", "libsvm"]), required=True,
        help="Input format (npy also takes .npz with X and y).")
@option("--label-column", default=None,
        help="csv/npy: label column, an index (negative counts from the end) or a header name; "
             "default: the last column.")
@option("--labels", type=click.Choice(["asis", "pm1"]), default="asis",
        help="pm1: map labels -1/+1 to 0/1 (for logistic loss).")
@option("--delimiter", default=",", help="csv: field separator.")
@option("--header/--no-header", default=None, help="csv: first line is a header (default: detect).")
@option("--n-features", type=click.IntRange(min=1), default=None, help="libsvm: number of columns.")
@option("--zero-based", is_flag=True, default=False, help="libsvm: feature indices start at 0.")
@option("--dtype", type=DTYPE, default="float32", help="Stored float type.")
@option("--task", type=click.Choice(["regression", "binary"]), default=None,
        help="Task attribute (default: inferred from the labels).")
def data_convert(source, out, fmt, label_column, labels, delimiter, header, n_features, zero_based,
                 dtype, task):
    """Convert CSV, NumPy or LIBSVM/svmlight data to pgd's dense HDF5 format."""
    from pgd.data import convert_file  # noqa: PLC0415

    if label_column is not None and label_column.lstrip("-").isdigit():
        label_column = int(label_column)
    world = _world()
    summary = _on_rank0(world, lambda: convert_file(
        source, out, fmt, label_column=label_column, labels=labels, delimiter=delimiter, header=header,
        n_features=n_features, zero_based=zero_based, dtype=dtype, task=task))
    _echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']} from {fmt} {source}")


@data.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@apply_options(DATA_OPTIONS[:2])
@JSON_OPTION
@option("--scan/--no-scan", default=True, help="Scan the values (non-finite count, label summary).")
def data_info(path, x_key, y_key, as_json, scan):
    """Shape, dtype, chunking, label summary and non-finite values of a dataset (scanned in parallel)."""
    from pgd.comm import collectively  # noqa: PLC0415
    from pgd.data import block_range, combine_descriptions, describe_dataset, format_description  # noqa

    world = _world()
    part = None
    with collectively(world):
        whole = describe_dataset(path, x_key, y_key, scan=False)
        start, stop = block_range(whole["n"], world.Get_size(), world.Get_rank())
        part = describe_dataset(path, x_key, y_key, scan=scan, start=start, stop=stop)
    parts = world.gather(part, root=0)
    if world.Get_rank() == 0:
        description = combine_descriptions(parts) if scan else whole
        click.echo(json.dumps(description, indent=2, default=str) if as_json
                   else format_description(description))


@cli.command()
@click.argument("data", type=click.Path(dir_okay=False))
@apply_options(TRAIN_OPTIONS)
@click.pass_context
def train(ctx, **values):
    """Fit a least-squares or logistic model to DATA (HDF5) with parallel gradient descent.

    Objective: (1/n) Σ loss(y_i, x_i·w + b) + (λ/2)‖w‖², intercept unpenalised.
    """
    from pgd.train import train as run_training  # noqa: PLC0415

    run_training(resolve(ctx, values), _world())


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@apply_options(DATA_OPTIONS)
@JSON_OPTION
def evaluate(model, data, x_key, y_key, hdf5_locking, as_json):
    """Metrics of MODEL on DATA: MSE, RMSE, MAE, R² (squared); log-loss, accuracy, ROC AUC (logistic)."""
    from pgd.evaluate import evaluate_model  # noqa: PLC0415

    world = _world()
    result = evaluate_model(world, model, data, x_key=x_key, y_key=y_key, locking=hdf5_locking)
    text = "\n".join(f"{key:<10} {value:.6g}" if isinstance(value, float) else f"{key:<10} {value}"
                     for key, value in result.items())
    _print_result(world, result, as_json, text)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@option("--out", type=click.Path(dir_okay=False), required=True, help="Predictions file (HDF5).")
@apply_options(DATA_OPTIONS)
def predict(model, data, out, x_key, y_key, hdf5_locking):
    """Write predictions of MODEL for DATA to an HDF5 file (probabilities for logistic models)."""
    from pgd.evaluate import predict_model  # noqa: PLC0415

    world = _world()
    result = predict_model(world, model, data, out, x_key=x_key, y_key=y_key, locking=hdf5_locking)
    _echo_rank0(world, f"wrote {result['out']}: {', '.join(result['columns'])} for {result['n']} rows")


@cli.group()
def bench():
    """Benchmarks: per-iteration cost against its baselines, scaling, communication."""


from pgd.bench_straggler import bench_straggler  # noqa: E402 - the command is defined with its benchmark

bench.add_command(bench_straggler)


@bench.command("gradient")
@option("--n", "n", type=click.IntRange(min=1), default=1_000_000, help="Rows (over all ranks).")
@option("--d", "d", type=click.IntRange(min=1), default=100, help="Columns.")
@option("--dtype", type=DTYPE, default="float32", help="Float type.")
@option("--loss", type=click.Choice(["squared", "logistic"]), default="squared", help="Loss.")
@option("--repeats", type=click.IntRange(min=1), default=20, help="Timed repetitions (median).")
@option("--block-bytes", type=click.IntRange(min=1024), default=1 << 20, help="pgd's row-block size.")
@JSON_OPTION
def bench_gradient(n, d, dtype, loss, repeats, block_bytes, as_json):
    """One training iteration of pgd against the naive X.T @ (X @ w - y) and a single GEMV over X."""
    from pgd.bench import format_gradient_bench, gradient_bench  # noqa: PLC0415

    world = _world()
    result = gradient_bench(world, n=n, d=d, dtype=dtype, loss=loss, repeats=repeats,
                            block_bytes=block_bytes)
    _print_result(world, result, as_json, format_gradient_bench(result))
