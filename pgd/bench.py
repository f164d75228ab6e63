"""Benchmarks that can be rerun: ``pgd bench gradient`` (one iteration against its baselines).

Timing rules: one warm-up repetition is excluded, every repetition starts after a ``Barrier``, the time of
a repetition is the maximum over ranks, and the median over repetitions is reported.
"""

from __future__ import annotations

import os
import statistics

import numpy as np
from mpi4py import MPI

from pgd.comm import AllreduceCommunicator
from pgd.data import block_range
from pgd.losses import LocalLinearGradient, get_loss
from pgd.optim import GradientDescent
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
    optimizer = GradientDescent(objective, xp=np, lr=0.1)
    optimizer.start(np.zeros(d + 1))
    naive_sums = np.empty(d + 2)

    def naive_step():
        residual = pointwise.derivative(y, X @ w, np)
        naive_sums[:d] = X.T @ residual
        naive_sums[d] = residual.sum()
        comm.allreduce(naive_sums)

    result = {
        "n": n, "d": d, "dtype": dtype, "loss": loss, "ranks": size, "block_bytes": block_bytes,
        "block_rows": local.block_rows, "blas_threads": os.environ.get("PGD_BLAS_THREADS_RESOLVED"),
        "pgd_iteration": time_collective(world, optimizer.step, repeats),
        "naive_iteration": time_collective(world, naive_step, repeats),
        "local_gemv": time_collective(world, lambda: X @ w, repeats),
    }
    del X, y, local, objective, optimizer
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
