"""The ``pgd`` command line: a thin layer over the modules that do the work.

Heavy modules (and MPI initialisation) are imported inside the commands, so ``pgd --help`` is instant.
Every command is safe under ``mpirun``: files are written by rank 0 only, and errors are agreed on by
all ranks (see :mod:`pgd.launch`).
"""

from __future__ import annotations

import json

import click

from pgd import __version__
from pgd.config import (CUDA_AWARE_OPTION, DATA_OPTIONS, DTYPE, NONNEG_FLOAT, SEED, TRAIN_OPTIONS, WEIGHT_OPTION,
                        apply_options, command_of, option, option_label, resolve)


def _world():
    from mpi4py import MPI  # noqa: PLC0415 - MPI starts only when a command needs it

    from pgd.launch import refuse_singletons  # noqa: PLC0415

    refuse_singletons(MPI.COMM_WORLD)
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


def _label(ctx, name: str, value) -> str:
    """``--name`` for messages, saying which environment variable set it if one did."""
    return option_label(resolve(ctx, {name: value}), name, command_of(ctx))


def _print_result(world, result: dict, as_json: bool, text: str) -> None:
    _echo_rank0(world, json.dumps(result, indent=2, default=str) if as_json else text)


JSON_OPTION = option("--json", "as_json", is_flag=True, show_default=False, help="Print JSON instead of text.")


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
    from pgd.info import format_fields, gather_info  # noqa: PLC0415

    world = _world()
    details = gather_info(world)
    _print_result(world, details, as_json, format_fields(details))


@cli.group()
def data():
    """Make, convert and inspect datasets in pgd's HDF5 format."""


@data.command("generate")
@click.argument("out", type=click.Path(dir_okay=False))
@option("--task", type=click.Choice(["regression", "binary"]), default="regression",
        help="regression: y = Xw + b + noise; binary: y ~ Bernoulli(sigmoid(Xw + b)).")
@option("--n", "n", type=click.IntRange(min=1), required=True, help="Rows.")
@option("--d", "d", type=click.IntRange(min=1), required=True, help="Columns.")
@option("--seed", type=SEED, default=0, help="Random seed.")
@option("--dtype", type=DTYPE, default="float32", help="Stored float type.")
@option("--noise", type=NONNEG_FLOAT, default=0.1, help="Noise level (see README).")
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
             "default: the last column; none: no labels (data to predict on).")
@option("--labels", type=click.Choice(["asis", "pm1", "classes"]), default="asis",
        help="pm1: map labels -1/+1 to 0/1 (for logistic loss); classes: map two classes (text or numbers, "
             "in sorted order) to 0/1, stored as the attribute label_classes.")
@option("--delimiter", default="auto", help="csv: field separator, \\t (or tab) for tabs; auto detects , ; tab |.")
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
    _echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']} from {fmt} {source}"
                       + "".join(f"\npgd: note: {note}" for note in summary.get("notes", [])))


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


@data.command("rechunk")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@option("--chunks", required=True, metavar="R,C", help="Chunk rows and columns of the new /X.")
@option("--memory", type=click.IntRange(min=1), default=64 << 20, help="Copy buffer bound in bytes.")
@apply_options(DATA_OPTIONS)
def data_rechunk(source, out, chunks, memory, x_key, y_key, hdf5_locking):
    """Copy a dataset with /X chunked R x C (e.g. for --mode feature column reads), in bounded memory."""
    from pgd.data.rechunk import rechunk_dataset  # noqa: PLC0415

    world = _world()
    summary = _on_rank0(world, lambda: rechunk_dataset(source, out, chunks, x_key=x_key, y_key=y_key,
                                                       memory_bytes=memory, locking=hdf5_locking))
    _echo_rank0(world, f"wrote {out}: {summary['n']} x {summary['d']}, chunks {tuple(summary['chunks'])} "
                       f"(was {summary['source_chunks']}), largest copy {summary['largest_tile_bytes']} B")


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
@apply_options(DATA_OPTIONS + [WEIGHT_OPTION])
@JSON_OPTION
def evaluate(model, data, x_key, y_key, hdf5_locking, weight_key, as_json):
    """Metrics of MODEL on DATA: MSE, RMSE, MAE, R² (squared); log-loss, accuracy, ROC AUC (logistic).
    Weighted when DATA has sample weights."""
    from pgd.evaluate import evaluate_model  # noqa: PLC0415
    from pgd.info import format_fields  # noqa: PLC0415

    world = _world()
    result = evaluate_model(world, model, data, x_key=x_key, y_key=y_key, locking=hdf5_locking,
                            weight_key=weight_key)
    _print_result(world, result, as_json, format_fields(result))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@option("--out", type=click.Path(dir_okay=False), required=True, help="Predictions file (HDF5).")
@apply_options(DATA_OPTIONS)
@click.pass_context
def predict(ctx, model, data, out, x_key, y_key, hdf5_locking):
    """Write predictions of MODEL for DATA to an HDF5 file (probabilities for logistic models)."""
    from pgd.evaluate import predict_model  # noqa: PLC0415

    world = _world()
    result = predict_model(world, model, data, out, x_key=x_key, y_key=y_key, locking=hdf5_locking,
                           out_label=_label(ctx, "out", out))
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


@bench.command("kernels")
@option("--elements", type=click.IntRange(min=1), default=1 << 28,
        help="Entries of X per case (rows = elements // d); 2**28 float32 = 1 GiB.")
@option("--d", "ds", type=click.IntRange(min=1), multiple=True,
        default=(16, 64, 256, 1024, 2048, 100, 1000, 1030, 4000), help="Columns (repeat the option for several).")
@option("--dtype", "dtypes", type=DTYPE, multiple=True, default=("float32",), help="Float types (repeatable).")
@option("--loss", "losses", type=click.Choice(["squared", "logistic"]), multiple=True, default=("squared",),
        help="Losses (repeatable).")
@option("--step-rows", type=click.IntRange(min=1), multiple=True, default=(100_000, 16_777_216),
        help="Rows of the d = 64 float32 training steps timed per iteration (repeatable).")
@option("--repeats", type=click.IntRange(min=1), default=20, help="Timed repetitions (median).")
@CUDA_AWARE_OPTION
@option("--comm", type=click.Choice(["allreduce", "reduce-bcast", "nccl"]), default="allreduce",
        help="Communicator of the timed steps.")
@JSON_OPTION
def bench_kernels(elements, ds, dtypes, losses, step_rows, repeats, cuda_aware, comm, as_json):
    """GPU: copy bandwidth, two-pass X.T @ (X @ w - y) and the fused one-pass kernel, as TB/s and fraction
    of copy bandwidth; then the time per training iteration."""
    from pgd.backend import select_backend  # noqa: PLC0415
    from pgd.gpu_bench import format_kernel_bench, run_kernel_bench  # noqa: PLC0415
    from pgd.train import node_local_rank  # noqa: PLC0415

    world = _world()
    backend = select_backend("gpu", node_local_rank(world)[0])
    result = run_kernel_bench(world, backend, elements=elements, ds=ds, dtypes=dtypes, losses=losses,
                              repeats=repeats, step_sizes=step_rows, comm=comm, cuda_aware=cuda_aware)
    _print_result(world, result, as_json, format_kernel_bench(result["kernels"], result["steps"]))


@bench.command("modes")
@option("--shapes", default="tall=200000x20,wide=1000x20000",
        help="Problems as NAME=NxD, comma-separated (n and d over all ranks).")
@option("--dtype", type=DTYPE, default="float64", help="Float type.")
@option("--repeats", type=click.IntRange(min=1), default=20, help="Timed repetitions (median).")
@option("--alpha", type=NONNEG_FLOAT, default=None, help="Latency α in seconds (default: measured).")
@option("--beta", type=NONNEG_FLOAT, default=None, help="Seconds per byte β (default: measured).")
@JSON_OPTION
def bench_modes(shapes, dtype, repeats, alpha, beta, as_json):
    """Time per iteration of --mode data, feature and hybrid, next to their α-β communication estimates."""
    from pgd.bench_modes import format_modes_bench, modes_bench  # noqa: PLC0415

    world = _world()
    result = modes_bench(world, shapes=shapes, dtype=dtype, repeats=repeats, alpha=alpha, beta=beta)
    _print_result(world, result, as_json, format_modes_bench(result))


@bench.command("scaling")
@option("--kind", type=click.Choice(["strong", "weak"]), default="strong",
        help="strong: --n rows in total; weak: --n rows per rank.")
@option("--ranks", default="1,2,4", help="Comma-separated rank counts, one run each.")
@option("--n", "n", type=click.IntRange(min=1), default=200_000, help="Rows (total: strong; per rank: weak).")
@option("--d", "d", type=click.IntRange(min=1), default=100, help="Columns.")
@option("--loss", type=click.Choice(["squared", "logistic"]), default="squared", help="Loss.")
@option("--mode", default="data", help="Parallel strategy (as pgd train --mode).")
@option("--comm", default="allreduce", help="Communicator (as pgd train --comm).")
@option("--device", default="cpu", help="Device (as pgd train --device).")
@option("--dtype", type=DTYPE, default="float32", help="Data type of the generated data.")
@option("--warmup", type=click.IntRange(min=0), default=3, help="Untimed steps before timing.")
@option("--repeats", type=click.IntRange(min=1), default=5, help="Timed groups (median).")
@option("--iters", type=click.IntRange(min=1), default=10, help="Steps per timed group.")
@option("--worker-args", default="", help="Extra `pgd train` options for every run, e.g. '--l2 1e-4'.")
@option("--plot/--no-plot", default=True, help="Write the PNG plot (needs matplotlib).")
@option("--out", type=click.Path(file_okay=False), required=True, help="Results directory.")
def bench_scaling(kind, ranks, n, d, loss, mode, comm, device, dtype, warmup, repeats, iters, worker_args,
                  plot, out):
    """Strong or weak scaling: one mpirun (srun inside SLURM) per rank count; CSV, JSON and PNG into --out.

    Run it as one process (not under mpirun): it launches the runs itself.
    """
    from pgd.bench_scaling import format_scaling, parse_ranks, run_scaling  # noqa: PLC0415

    result = run_scaling(kind=kind, ranks=parse_ranks(ranks), n=n, d=d, loss=loss, out=out,
                         settings={"mode": mode, "comm": comm, "device": device, "dtype": dtype},
                         warmup=warmup, repeats=repeats, iters=iters, worker_args=worker_args, plot=plot,
                         echo=click.echo)
    click.echo(format_scaling(result))


@bench.command("_worker", hidden=True)
@click.argument("data", type=click.Path(dir_okay=False))
@apply_options(TRAIN_OPTIONS)
@click.option("--result", type=click.Path(dir_okay=False), required=True, help="JSON result file.")
@click.option("--warmup", type=click.IntRange(min=0), default=3)
@click.option("--repeats", type=click.IntRange(min=1), default=5)
@click.option("--iters", type=click.IntRange(min=1), default=10)
@click.pass_context
def bench_worker(ctx, result, warmup, repeats, iters, **values):
    """Internal: one timed scaling run (launched by `pgd bench scaling`)."""
    from pgd.bench_scaling import scaling_worker  # noqa: PLC0415
    from pgd.fileio import atomic_path  # noqa: PLC0415

    world = _world()
    timing = scaling_worker(resolve(ctx, values), world, warmup=warmup, repeats=repeats, iters=iters)

    def write():
        with atomic_path(result) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            json.dump(timing, handle)

    _on_rank0(world, write)


@bench.command("comm")
@option("--min-bytes", type=click.IntRange(min=8), default=8, help="Smallest message.")
@option("--max-bytes", type=click.IntRange(min=8), default=64 << 20, help="Largest message (64 MiB).")
@option("--repeats", type=click.IntRange(min=1), default=20, help="Timed repetitions (median).")
@option("--gpu/--no-gpu", default=True, help="Also time device buffers (staged, NCCL) where a GPU exists.")
@option("--out", type=click.Path(file_okay=False), default=None,
        help="Directory for comm.csv, comm.json and comm.png.")
@option("--plot/--no-plot", default=True, help="Write comm.png with --out (needs matplotlib).")
@JSON_OPTION
def bench_comm(min_bytes, max_bytes, repeats, gpu, out, plot, as_json):
    """Allreduce vs Reduce+Bcast (and NCCL / staged device buffers) from 8 B to 64 MiB, with an α-β fit."""
    from pgd.bench import machine_facts, write_results  # noqa: PLC0415
    from pgd.bench_comm import comm_bench, format_comm  # noqa: PLC0415

    world = _world()
    result = comm_bench(world, min_bytes=min_bytes, max_bytes=max_bytes, repeats=repeats, gpu=gpu)

    def save():
        import os  # noqa: PLC0415

        os.makedirs(out, exist_ok=True)
        meta = dict(machine_facts(), models=result["models"], notes=result["notes"])
        files = list(write_results(out, "comm", result["rows"], meta))
        if plot:
            from pgd.plots import plot_comm  # noqa: PLC0415

            files.append(plot_comm(result["rows"], os.path.join(out, "comm.png")))
        return files

    files = _on_rank0(world, save) if out else []
    text = format_comm(result) + ("\nwrote " + ", ".join(files) if files else "")
    _print_result(world, result, as_json, text)


@bench.command("peers")
@option("--n", "n", type=click.IntRange(min=2), default=200_000, help="Rows.")
@option("--d", "d", type=click.IntRange(min=1), default=100, help="Columns.")
@option("--loss", type=click.Choice(["squared", "logistic"]), default="logistic", help="Loss.")
@option("--l2", type=NONNEG_FLOAT, default=1e-3, help="L2 penalty λ, the same for every tool.")
@option("--ranks", type=click.IntRange(min=1), default=2, help="MPI ranks / DDP processes / Spark cores.")
@option("--max-iter", type=click.IntRange(min=1), default=500, help="Iteration budget of every tool.")
@option("--target-rtol", type=NONNEG_FLOAT, default=1e-4,
        help="Target loss = best exact loss × (1 + this).")
@option("--tools", default="sklearn,torch,spark", help="Peers to run (each only when installed).")
@option("--out", type=click.Path(file_okay=False), required=True, help="Results directory.")
def bench_peers(n, d, loss, l2, ranks, max_iter, target_rtol, tools, out):
    """pgd against scikit-learn, PyTorch DDP (gloo) and Spark MLlib on the same data and objective.

    Run it as one process: it launches pgd with mpirun (srun inside SLURM). Peers: pip install 'pgd[peers]'.
    """
    from pgd.bench_peers import format_peers, run_peers  # noqa: PLC0415

    result = run_peers(n=n, d=d, loss=loss, l2=l2, ranks=ranks, out=out, max_iter=max_iter,
                       target_rtol=target_rtol, tools=[tool.strip() for tool in tools.split(",")], echo=click.echo)
    click.echo(format_peers(result))
