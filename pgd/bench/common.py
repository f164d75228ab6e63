"""Benchmarks that can be rerun: ``pgd bench gradient`` (one iteration against its floor) and shared helpers.

Timing rules: one warm-up repetition is excluded, every repetition starts after a ``Barrier``, the time of
a repetition is the maximum over ranks, and the median over repetitions is reported; candidates compared
with a floor are interleaved with it round by round.
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
from pgd.bench.timing import interleaved_samples
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


#: Pause before each timed call when a rank has several BLAS threads (OpenBLAS's workers spin about 2^28
#: cycles, some 0.07 s, after a multi-threaded call: :func:`pgd.bench.timing.interleaved_samples`).
BLAS_SETTLE_SECONDS = 0.15


def interleaved_collective(world, candidates: dict, rounds: int) -> dict:
    """Median seconds of every candidate over ``rounds`` interleaved rounds
    (:func:`pgd.bench.timing.interleaved_samples`), each call after a ``Barrier`` and timed as the maximum
    over ranks (all ranks run it concurrently); with several BLAS threads, each call after a pause of
    :data:`BLAS_SETTLE_SECONDS` (the BLAS's spinning workers gone back to sleep)."""
    settle = BLAS_SETTLE_SECONDS if launcher.blas_thread_count() > 1 else 0.0
    samples = interleaved_samples(candidates, rounds, barrier=world.Barrier, settle=settle,
                                  reduce_max=lambda seconds: world.allreduce(seconds, op=MPI.MAX))
    return {name: statistics.median(values) for name, values in samples.items()}


def _pgd_step(X, y, n: int, loss: str, comm, block_bytes: int, host_kernel: str):
    """One iteration of ``--optimizer gd`` as ``pgd train`` runs it (local sums, Allreduce, update) and the
    description of the gradient path."""
    pointwise = get_loss(loss)
    local = LocalLinearGradient(X, y, pointwise, fit_intercept=True, xp=np, block_bytes=block_bytes,
                                host_kernel=host_kernel)
    objective = DataParallelObjective(local, comm, n, 0.0, np, curvature=pointwise.curvature_bound)
    optimizer = PlainGradientDescent(objective, xp=np, lr=0.1)
    optimizer.start(np.zeros(X.shape[1] + 1))
    return optimizer.step, local.kernel


def gradient_bench(world, *, n: int, d: int, dtype: str, loss: str, repeats: int,
                   block_bytes: int) -> dict:
    """Per-iteration times of pgd's gradient paths against the floor, one GEMV over the same rows.

    Candidates, interleaved with the floor in every round (:func:`interleaved_collective`): the iteration on
    the compiled one-pass kernel (where numba can run it), on the blocked BLAS path, and the naive two-pass
    ``X.T @ (X @ w - y)``; each ends with the Allreduce.  The floor is ``X @ w`` over each rank's own rows
    on all ranks at once, with this rank's BLAS threads (the kernel uses as many).

    Returns
    -------
    dict
        Median seconds per candidate, their ratios to the floor, and what ran.
    """
    rank, size = world.Get_rank(), world.Get_size()
    start, stop = block_range(n, size, rank)
    X, y = _random_rows(stop - start, d, dtype, seed=1000 + rank)
    w = np.full(d, 0.01, dtype=dtype)
    z = np.empty(X.shape[0], dtype=dtype)
    comm = AllreduceCommunicator(world)
    pointwise = get_loss(loss)
    naive_sums = np.empty(d + 2)

    def naive_step():
        residual = pointwise.derivative(y, X @ w, np)
        naive_sums[:d] = X.T @ residual
        naive_sums[d] = residual.sum()
        comm.allreduce(naive_sums)

    candidates = {"gemv": lambda: np.dot(X, w, out=z), "naive_iteration": naive_step}
    kernels = {}
    for name, choice in (("fused_iteration", "fused"), ("blocked_iteration", "blocked")):
        step, kernels[name] = _pgd_step(X, y, n, loss, comm, block_bytes, choice)
        if choice == "blocked" or "numba" in kernels[name]:
            candidates[name] = step
    times = interleaved_collective(world, candidates, repeats)
    floor = times["gemv"]
    result = {"n": n, "d": d, "dtype": dtype, "loss": loss, "ranks": size, "block_bytes": block_bytes,
              "blas_threads": launcher.BLAS_THREADS_RESOLVED, "rows_per_rank": stop - start,
              "floor_GBps_per_rank": X.nbytes / floor / 1e9, "kernels": kernels, **times}
    for key in times:
        result[f"{key}_over_gemv"] = times[key] / floor
    return result


def format_gradient_bench(result: dict) -> str:
    """A small table of the gradient benchmark: every candidate against the floor of the same run."""
    rows = [("pgd iteration, compiled one-pass kernel", "fused_iteration"),
            ("pgd iteration, blocked BLAS path", "blocked_iteration"),
            ("naive X.T @ (X @ w - y) + Allreduce", "naive_iteration"),
            ("floor: one GEMV over each rank's rows", "gemv")]
    head = (f"gradient bench: {result['n']} x {result['d']} {result['dtype']} {result['loss']}, "
            f"{result['ranks']} rank(s) at once, BLAS threads {result['blas_threads']}, "
            f"floor {result['floor_GBps_per_rank']:.1f} GB/s per rank (medians, interleaved)")
    lines = [head]
    for label, key in rows:
        if key in result:
            lines.append(f"  {label:<45} {result[key] * 1e3:9.2f} ms  {result[f'{key}_over_gemv']:5.2f}x floor")
    if "fused_iteration" not in result:
        lines.append(f"  (no compiled kernel: {result['kernels']['fused_iteration']})")
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
