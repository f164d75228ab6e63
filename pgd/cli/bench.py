"""``pgd bench …``: the benchmark commands (the work is in :mod:`pgd.bench`, which has no click)."""

from __future__ import annotations

import json

import click

from pgd.cli.common import JSON_OPTION, get_world, on_rank0, print_result
from pgd.cli.options import CUDA_AWARE_OPTION, TRAIN_OPTIONS
from pgd.cli.train import train
from pgd.config import DTYPE, NONNEG_FLOAT, FiniteFloatRange, apply_options, option, resolve


@click.group()
def bench():
    """Benchmarks: per-iteration cost against its baselines, scaling, communication."""


def _train_config(arguments: list[str]):
    """The resolved ``pgd train`` configuration of ``arguments``, silenced (parsed as ``pgd train`` parses)."""
    context = train.make_context("train", list(arguments))
    return resolve(context, dict(context.params)).replace(silent=True)


@bench.command("straggler")
@option("--n", "n", type=click.IntRange(min=8), default=6000, help="Rows of the generated data.")
@option("--d", "d", type=click.IntRange(min=1), default=200, help="Columns.")
@option("--condition", type=FiniteFloatRange(min=1.0), default=100.0, help="Condition number of the data.")
@option("--bounds", default="0,1,4,none", help="Staleness bounds to compare (0 = sync, none = async).")
@option("--slow-factor", type=FiniteFloatRange(min=1.0), default=4.0, help="The last rank is this much slower.")
@option("--repeats", type=click.IntRange(min=1), default=3, help="Runs per configuration (median).")
@option("--fraction", type=FiniteFloatRange(min=0.0, max=1.0, min_open=True), default=0.001,
        help="Target loss f* + fraction * (f(0) - f*).")
@option("--local-batch", type=click.IntRange(min=1), default=128, help="Rows per worker mini-batch.")
@option("--updates", type=click.IntRange(min=1), default=20000, help="Update budget of each run.")
@option("--out-dir", type=click.Path(file_okay=False), default="bench-results/straggler",
        help="Where the data, straggler.json and straggler.png go.")
@option("--plot/--no-plot", default=True, help="Write the PNG (needs matplotlib).")
@JSON_OPTION
def bench_straggler(n, d, condition, bounds, slow_factor, repeats, fraction, local_batch, updates, out_dir, plot,
                    as_json):
    """Sync, SSP and fully async training with one slow rank: loss against time, time to a target."""
    from pgd.bench.straggler import format_straggler, parse_bounds, straggler_bench, write_results  # noqa: PLC0415

    world = get_world()
    result = straggler_bench(world, n=n, d=d, bounds=parse_bounds(bounds), slow_factor=slow_factor,
                             repeats=repeats, fraction=fraction, local_batch=local_batch, updates=updates,
                             out_dir=out_dir, condition=condition,
                             make_config=_train_config)
    paths = on_rank0(world, lambda: write_results(result, out_dir, plot=plot))
    if world.Get_rank() == 0:
        result = dict(result, files=paths)
    text = format_straggler(result) + "\n" + "\n".join(f"wrote {path}" for path in paths) if result else ""
    print_result(world, {key: value for key, value in (result or {}).items()}, as_json, text)


@bench.command("gradient")
@option("--n", "n", type=click.IntRange(min=1), default=1_000_000, help="Rows (over all ranks).")
@option("--d", "d", type=click.IntRange(min=1), default=100, help="Columns.")
@option("--dtype", type=DTYPE, default="float32", help="Float type.")
@option("--loss", type=click.Choice(["squared", "logistic", "multinomial"]), default="squared", help="Loss.")
@option("--classes", type=click.IntRange(min=2), multiple=True, default=(2, 10, 100),
        help="multinomial: K (repeat the option for several; each against one GEMM over X).")
@option("--repeats", type=click.IntRange(min=1), default=20, help="Timed repetitions (median).")
@option("--block-bytes", type=click.IntRange(min=1024), default=1 << 20, help="pgd's row-block size.")
@JSON_OPTION
def bench_gradient(n, d, dtype, loss, classes, repeats, block_bytes, as_json):
    """One training iteration of pgd (compiled kernel, blocked BLAS, naive) against one GEMV over the same rows;
    multinomial: against one GEMM X W over this rank's rows, for every --classes K."""
    from pgd.bench.common import format_gradient_bench, gradient_bench  # noqa: PLC0415

    world = get_world()
    if loss == "multinomial":
        from pgd.bench.multinomial import format_multinomial_bench, multinomial_gradient_bench  # noqa: PLC0415

        result = multinomial_gradient_bench(world, n=n, d=d, dtype=dtype, classes=classes, repeats=repeats,
                                            block_bytes=block_bytes)
        return print_result(world, result, as_json, format_multinomial_bench(result))
    result = gradient_bench(world, n=n, d=d, dtype=dtype, loss=loss, repeats=repeats,
                            block_bytes=block_bytes)
    print_result(world, result, as_json, format_gradient_bench(result))


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
    from pgd.bench.kernels import format_kernel_bench, run_kernel_bench  # noqa: PLC0415
    from pgd.device.backend import select_backend  # noqa: PLC0415
    from pgd.runtime.topology import node_local_rank  # noqa: PLC0415

    world = get_world()
    backend = select_backend("gpu", node_local_rank(world)[0])
    result = run_kernel_bench(world, backend, elements=elements, ds=ds, dtypes=dtypes, losses=losses,
                              repeats=repeats, step_sizes=step_rows, comm=comm, cuda_aware=cuda_aware)
    print_result(world, result, as_json, format_kernel_bench(result["kernels"], result["steps"]))


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
    from pgd.bench.modes import format_modes_bench, modes_bench  # noqa: PLC0415

    world = get_world()
    result = modes_bench(world, shapes=shapes, dtype=dtype, repeats=repeats, alpha=alpha, beta=beta)
    print_result(world, result, as_json, format_modes_bench(result))


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
    from pgd.bench.scaling import format_scaling, parse_ranks, run_scaling  # noqa: PLC0415

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
    from pgd.bench.scaling import scaling_worker  # noqa: PLC0415
    from pgd.fileio import atomic_path  # noqa: PLC0415

    world = get_world()
    timing = scaling_worker(resolve(ctx, values), world, warmup=warmup, repeats=repeats, iters=iters)

    def write():
        with atomic_path(result) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            json.dump(timing, handle)

    on_rank0(world, write)


@bench.command("comm")
@option("--min-bytes", type=click.IntRange(min=8), default=8, help="Smallest message.")
@option("--max-bytes", type=click.IntRange(min=8), default=64 << 20, help="Largest message (64 MiB).")
@option("--repeats", type=click.IntRange(min=1), default=20, help="Timed repetitions (median).")
@option("--gpu/--no-gpu", default=True, help="Also time device buffers (staged, NCCL) where a GPU exists.")
@option("--out", type=click.Path(file_okay=False), default=None,
        help="Directory for comm.csv, comm.json and comm.png.")
@option("--plot/--no-plot", default=True, help="Write comm.png with --out (needs matplotlib).")
@option("--features", type=click.IntRange(min=1), default=None,
        help="Also time the gradient buffer of a model with this many features, 8 (d + 2) bytes (the sizes "
             "grow up to it when it is above --max-bytes): a high-d model's cost per iteration.")
@JSON_OPTION
def bench_comm(min_bytes, max_bytes, repeats, gpu, out, plot, features, as_json):
    """Allreduce vs Reduce+Bcast (and NCCL / staged device buffers) from 8 B to 64 MiB, with an α-β fit."""
    from pgd.bench.comm import comm_bench, format_comm, model_buffer_bytes  # noqa: PLC0415
    from pgd.bench.common import machine_facts, write_results  # noqa: PLC0415

    world = get_world()
    model_bytes = model_buffer_bytes(features) if features else None
    result = comm_bench(world, min_bytes=min_bytes, max_bytes=max_bytes, repeats=repeats, gpu=gpu,
                        model_bytes=model_bytes)
    if model_bytes:
        result["notes"].append(f"the gradient buffer of a {features}-feature model is {model_bytes} B")

    def save():
        import os  # noqa: PLC0415

        os.makedirs(out, exist_ok=True)
        meta = dict(machine_facts(), models=result["models"], notes=result["notes"])
        files = list(write_results(out, "comm", result["rows"], meta))
        if plot:
            from pgd.bench.plots import plot_comm  # noqa: PLC0415

            files.append(plot_comm(result["rows"], os.path.join(out, "comm.png")))
        return files

    files = on_rank0(world, save) if out else []
    text = format_comm(result) + ("\nwrote " + ", ".join(files) if files else "")
    print_result(world, result, as_json, text)


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
    from pgd.bench.peers import format_peers, run_peers  # noqa: PLC0415

    result = run_peers(n=n, d=d, loss=loss, l2=l2, ranks=ranks, out=out, max_iter=max_iter,
                       target_rtol=target_rtol, tools=[tool.strip() for tool in tools.split(",")], echo=click.echo)
    click.echo(format_peers(result))
