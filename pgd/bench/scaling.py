"""``pgd bench scaling``: strong and weak scaling runs, launched one ``mpirun``/``srun`` per rank count.

Each run is a hidden worker command (``pgd bench _worker``) that builds the objective with pgd's own
strategy (``STRATEGIES[--mode]``) and optimizer, takes warm-up steps, then times ``repeats`` groups of
``iters`` steps after a ``Barrier``. A group's per-iteration time is split into compute / communication /
other, each the maximum over ranks; the median over groups is reported. Start-up and data loading are not
timed.

Strong scaling keeps ``n`` rows in total; weak scaling gives every rank ``n`` rows (``n × ranks`` in total).
Speedup and efficiency are relative to the smallest rank count ``b`` of the list:
strong ``speedup = b·t_b / t_k``, ``efficiency = speedup / k``; weak ``efficiency = t_b / t_k``,
``speedup = k·efficiency``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

from pgd.errors import InputError, PgdError

#: Columns of results.csv, in order.
COLUMNS = ["kind", "ranks", "n", "d", "loss", "mode", "comm", "device", "dtype", "iters", "repeats",
           "time_per_iter", "compute", "communication", "other", "speedup", "efficiency", "comm_bytes",
           "blas_threads"]


def scaling_worker(cfg, world, *, warmup: int, repeats: int, iters: int) -> dict:
    """Time ``iters`` optimizer steps ``repeats`` times (after ``warmup`` steps); same dict on every rank.

    Parameters
    ----------
    cfg : pgd.config.RunConfig
        ``pgd train`` options (data, loss, mode, comm, device, ...).
    world : mpi4py.MPI.Comm
        The ranks of the run.
    """
    # imported here: the parent `pgd bench scaling` process launches mpirun and must not start MPI itself
    from mpi4py import MPI  # noqa: PLC0415

    from pgd.bench.common import median_of  # noqa: PLC0415
    from pgd.comm.host import max_over_ranks  # noqa: PLC0415
    from pgd.optim import make_optimizer  # noqa: PLC0415
    from pgd.runtime.topology import mpi_library  # noqa: PLC0415
    from pgd.training.setup import bind_backend, blas_threads, build_objective, describe_device, step_size  # noqa: PLC0415

    backend, _ = bind_backend(cfg, world)
    # the objective pgd train builds (standardised by default), iterated; one gradient per step by default
    cfg = cfg.replace(solver="iterative", optimizer="gd" if cfg.optimizer == "auto" else cfg.optimizer)
    objective, slab, _, method = build_objective(cfg, world, backend)
    lr, _, _ = step_size(cfg, objective, method, method_default=False)  # --lr auto: 1/L for every method
    optimizer = make_optimizer(method, objective, xp=backend.xp, lr=lr, cfg=cfg)
    optimizer.start(objective.zeros())
    for _ in range(warmup):
        optimizer.step()
    samples = []
    for _ in range(repeats):
        objective.comm.reset_counters()
        objective.compute_seconds = 0.0
        backend.synchronize()
        world.Barrier()
        started = MPI.Wtime()
        for _ in range(iters):
            optimizer.step()
        backend.synchronize()
        wall = MPI.Wtime() - started
        compute, comm = objective.compute_seconds, objective.comm.seconds
        parts = [wall, compute, comm, wall - compute - comm]
        samples.append([value / iters for value in max_over_ranks(world, parts)])
    time_per_iter, compute, comm, other = median_of(samples)
    return {
        "ranks": world.Get_size(), "n": slab.n_global, "d": slab.meta.d, "loss": cfg.loss, "mode": cfg.mode,
        "comm": objective.comm.name, "device": describe_device(backend), "dtype": str(slab.dtype),
        "iters": iters, "repeats": repeats, "warmup": warmup,
        "time_per_iter": time_per_iter, "compute": compute, "communication": comm, "other": other,
        "comm_bytes": objective.comm.bytes // max(objective.comm.calls, 1),
        "blas_threads": blas_threads(),
        "cuda_aware": "no GPU" if not backend.is_gpu else getattr(objective.comm, "cuda_aware", "host staging"),
        "mpi_library": mpi_library(),
        "final_loss": optimizer.loss,
    }


def parse_ranks(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique, positive)."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--ranks must be a comma-separated list of integers, got {text!r}") from None
    if not ranks or ranks[0] < 1:
        raise InputError(f"--ranks needs positive rank counts, got {text!r}")
    return ranks


def launcher_command(ranks: int, environ=os.environ) -> list[str]:
    """``srun -n K`` inside a SLURM allocation, else ``mpirun [--oversubscribe --allow-run-as-root] -n K``."""
    if environ.get("SLURM_JOB_ID"):
        return ["srun", "-n", str(ranks)]
    bin_dir = os.path.dirname(sys.executable)
    mpirun = shutil.which("mpirun", path=bin_dir + os.pathsep + environ.get("PATH", ""))
    if mpirun is None:
        raise InputError("mpirun not found on PATH (needed to launch the scaling runs)")
    root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return [mpirun, "--oversubscribe", *root, "-n", str(ranks)]


def run_worker(ranks: int, data: str, result: str, settings: dict, worker_args: str, timeout: float) -> dict:
    """Launch one ``pgd bench _worker`` run on ``ranks`` ranks and read its result file."""
    command = launcher_command(ranks) + [sys.executable, "-m", "pgd", "bench", "_worker", data,
                                         "--result", result]
    for name, value in settings.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    command += shlex.split(worker_args)
    from pgd.bench.common import child_environment  # noqa: PLC0415

    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_environment())
    except subprocess.TimeoutExpired:
        raise PgdError(f"the {ranks}-rank run took longer than {timeout:g} s: {shlex.join(command)}") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise PgdError(f"the {ranks}-rank run failed (exit {done.returncode}): {last}")
    with open(result, encoding="utf-8") as handle:
        return json.load(handle)


def add_speedup(rows: list[dict], kind: str) -> None:
    """Fill ``speedup`` and ``efficiency`` relative to the first (smallest) rank count."""
    base_ranks, base_time = rows[0]["ranks"], rows[0]["time_per_iter"]
    for row in rows:
        ratio = base_time / row["time_per_iter"]
        if kind == "strong":
            row["speedup"] = ratio * base_ranks
            row["efficiency"] = row["speedup"] / row["ranks"]
        else:
            row["efficiency"] = ratio
            row["speedup"] = ratio * row["ranks"] / base_ranks
        row["speedup"], row["efficiency"] = round(row["speedup"], 4), round(row["efficiency"], 4)


def run_scaling(*, kind: str, ranks: list[int], n: int, d: int, loss: str, out: str, settings: dict,
                warmup: int, repeats: int, iters: int, worker_args: str = "", plot: bool = True,
                timeout: float = 1800.0, echo=print) -> dict:
    """Generate the data, launch one run per rank count, write results.csv/.json and the plot.

    Parameters
    ----------
    settings : dict
        Options passed to every worker (``mode``, ``comm``, ``device``, ``dtype``, ...).
    """
    from pgd.bench.common import machine_facts, write_results  # noqa: PLC0415
    from pgd.data import generate_dataset  # noqa: PLC0415
    from pgd.runtime.launcher import launcher_size  # noqa: PLC0415

    if (launcher_size() or 1) > 1:
        raise InputError("run `pgd bench scaling` as one process: it launches its own mpirun/srun runs")
    os.makedirs(out, exist_ok=True)
    task = "binary" if loss == "logistic" else "regression"
    rows = []
    for k in ranks:
        rows_total = n if kind == "strong" else n * k
        data = os.path.join(out, f"data-{task}-{rows_total}x{d}.h5")
        if not os.path.exists(data):
            generate_dataset(data, task, rows_total, d, seed=1, dtype=settings.get("dtype", "float32"))
        result = os.path.join(out, f"run-{kind}-{k}.json")
        worker = run_worker(k, data, result, dict(settings, loss=loss, warmup=warmup, repeats=repeats,
                                                  iters=iters), worker_args, timeout)
        rows.append(dict(worker, kind=kind))
        echo(f"  {kind} {k} rank(s): {worker['time_per_iter'] * 1e3:.3f} ms per iteration")
    add_speedup(rows, kind)
    first = rows[0]
    meta = dict(machine_facts(), kind=kind, launcher=launcher_command(ranks[0])[0],
                mpi_library=first["mpi_library"], device=first["device"], cuda_aware=first["cuda_aware"],
                warmup=warmup, timing="median over repeats of per-iteration time; each part max over ranks")
    table = [{column: row.get(column) for column in COLUMNS} for row in rows]
    csv_path, json_path = write_results(out, "results", table, meta)
    files = [csv_path, json_path]
    if plot:
        from pgd.bench.plots import plot_scaling  # noqa: PLC0415

        files.append(plot_scaling(table, kind, os.path.join(out, f"scaling-{kind}.png")))
    return {"meta": meta, "rows": table, "files": files}


def format_scaling(result: dict) -> str:
    """The scaling table in milliseconds."""
    from pgd.bench.common import format_table  # noqa: PLC0415

    rows = [dict(row, **{key: row[key] * 1e3 for key in ("time_per_iter", "compute", "communication", "other")})
            for row in result["rows"]]
    first = rows[0]
    head = (f"{first['kind']} scaling: {first['loss']}, d = {first['d']}, mode {first['mode']}, "
            f"comm {first['comm']}, {first['device']}, {first['dtype']}; ms per iteration "
            f"(median of {first['repeats']} x {first['iters']} iterations, max over ranks)")
    columns = [("ranks", "ranks", "d"), ("n", "n", "d"), ("time", "time_per_iter", ".3f"),
               ("compute", "compute", ".3f"), ("comm", "communication", ".3f"), ("other", "other", ".3f"),
               ("speedup", "speedup", ".2f"), ("efficiency", "efficiency", ".2f")]
    return "\n".join([head, format_table(rows, columns), "wrote " + ", ".join(result["files"])])
