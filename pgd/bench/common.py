"""Benchmarks that can be rerun: ``pgd bench gradient`` (one iteration against its baselines).

Timing rules: one warm-up repetition is excluded, every repetition starts after a ``Barrier``, the time of
a repetition is the maximum over ranks, and the median over repetitions is reported.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import statistics
import subprocess

import numpy as np
from mpi4py import MPI

import pgd
from pgd.comm.host import AllreduceCommunicator
from pgd.data import block_range
from pgd.fileio import atomic_path
from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss
from pgd.optim.base import PlainGradientDescent
from pgd.runtime import launcher
from pgd.runtime.launcher import BLAS_VARS
from pgd.strategies.data_parallel import DataParallelObjective


def time_collective(world, work, repeats: int) -> float:
    """Median over ``repeats`` of the max-over-ranks wall time of ``work()`` (after one warm-up)."""
    work()
    samples = []
    for _ in range(repeats):
        world.Barrier()
        started = MPI.Wtime()
        work()
        samples.append(world.allreduce(MPI.Wtime() - started, op=MPI.MAX))
    return statistics.median(samples)


def _random_rows(rows: int, d: int, dtype, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, d), dtype=np.float32).astype(dtype, copy=False)
    w = rng.standard_normal(d).astype(dtype) / np.sqrt(d)
    y = (X @ w > 0).astype(dtype)
    return X, y


def gradient_bench(world, *, n: int, d: int, dtype: str, loss: str, repeats: int,
                   block_bytes: int) -> dict:
    """Per-iteration times: pgd's step, the naive two-pass gradient + Allreduce, one local GEMV, and
    (on rank 0 alone, the others waiting) one GEMV over the whole ``X``.

    Returns
    -------
    dict
        Seconds per operation and the ratios to the whole-X GEMV.
    """
    rank, size = world.Get_rank(), world.Get_size()
    start, stop = block_range(n, size, rank)
    X, y = _random_rows(stop - start, d, dtype, seed=1000 + rank)
    w = np.full(d, 0.01, dtype=dtype)
    pointwise = get_loss(loss)
    comm = AllreduceCommunicator(world)
    local = LocalLinearGradient(X, y, pointwise, fit_intercept=True, xp=np, block_bytes=block_bytes)
    objective = DataParallelObjective(local, comm, n, 0.0, np, curvature=pointwise.curvature_bound)
    optimizer = PlainGradientDescent(objective, xp=np, lr=0.1)
    optimizer.start(np.zeros(d + 1))
    naive_sums = np.empty(d + 2)

    def naive_step():
        residual = pointwise.derivative(y, X @ w, np)
        naive_sums[:d] = X.T @ residual
        naive_sums[d] = residual.sum()
        comm.allreduce(naive_sums)

    result = {
        "n": n, "d": d, "dtype": dtype, "loss": loss, "ranks": size, "block_bytes": block_bytes,
        "block_rows": local.block_rows, "blas_threads": launcher.BLAS_THREADS_RESOLVED,
        "pgd_iteration": time_collective(world, optimizer.step, repeats),
        "naive_iteration": time_collective(world, naive_step, repeats),
        "local_gemv": time_collective(world, lambda: X @ w, repeats),
    }
    X = y = local = objective = optimizer = None  # free the slab before rank 0 allocates the whole matrix
    whole = None
    if rank == 0:
        X_whole, _ = _random_rows(n, d, dtype, seed=7)
        whole = time_collective(MPI.COMM_SELF, lambda: X_whole @ w, repeats)
        del X_whole
    result["whole_gemv"] = world.bcast(whole, root=0)
    for key in ("pgd_iteration", "naive_iteration", "local_gemv"):
        result[f"{key}_over_whole_gemv"] = result[key] / result["whole_gemv"]
    return result


def format_gradient_bench(result: dict) -> str:
    """A small table of the gradient benchmark."""
    rows = [("pgd iteration (blocked gradient + Allreduce + step)", "pgd_iteration"),
            ("naive X.T @ (X @ w - y) + Allreduce", "naive_iteration"),
            ("one GEMV over this rank's rows", "local_gemv"),
            ("one GEMV over the whole X (1 rank)", "whole_gemv")]
    head = (f"gradient bench: {result['n']} x {result['d']} {result['dtype']} {result['loss']}, "
            f"{result['ranks']} rank(s), BLAS threads {result['blas_threads']}, "
            f"blocks of {result['block_rows']} rows")
    lines = [head]
    for label, key in rows:
        ratio = result.get(f"{key}_over_whole_gemv", 1.0)
        lines.append(f"  {label:<52} {result[key] * 1e3:9.2f} ms  {ratio:5.2f}x whole-X GEMV")
    return "\n".join(lines)


def median_of(samples: list) -> list:
    """Column-wise median of a list of equal-length sequences."""
    return [statistics.median(column) for column in zip(*samples)]


def git_commit() -> str:
    """The git commit pgd was loaded from (``unknown`` outside a git checkout)."""

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_facts() -> dict:
    """Host, CPU model and core count, Python and NumPy versions, pgd version and git commit."""

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"pgd_version": pgd.__version__, "git_commit": git_commit(), "host": socket.gethostname(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}


def write_results(out_dir: str, stem: str, rows: list[dict], meta: dict) -> tuple[str, str]:
    """Write ``rows`` to ``OUT_DIR/STEM.csv`` and ``{"meta": meta, "rows": rows}`` to ``STEM.json``.

    Both files are written atomically; the CSV columns are the union of the rows' keys, in first-seen
    order. Returns the two paths.
    """

    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, json_path = (os.path.join(out_dir, f"{stem}.{ext}") for ext in ("csv", "json"))
    with atomic_path(csv_path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(json_path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"meta": meta, "rows": rows}, handle, indent=2, default=str)
    return csv_path, json_path


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A fixed-width text table: ``columns`` are ``(header, key, format spec)``; missing values print '-'."""
    cells = [[header for header, _, _ in columns]]
    for row in rows:
        cells.append([format(row[key], spec) if row.get(key) is not None else "-" for _, key, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells)


def child_environment(environ=os.environ) -> dict:
    """The environment for runs launched by a benchmark: the BLAS thread variables that pgd set for
    *this* process (one thread per core) are removed, so every launched rank picks its own share;
    thread counts the user set explicitly are kept."""

    env = dict(environ)
    resolved = env.pop("PGD_BLAS_THREADS_RESOLVED", "")
    if resolved.endswith("(one per core available to the rank)"):
        for name in BLAS_VARS:
            env.pop(name, None)
    return env
