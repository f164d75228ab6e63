"""``pgd bench gradient --loss multinomial``: one iteration of a K-class multinomial fit against one GEMM over X.

The floor of a one-pass gradient is reading ``X`` once while multiplying it by a (d, K) matrix: one GEMM
``X W`` over this rank's rows.  pgd's blocked gradient does ``X_b W`` and ``X_bᵀ R_b`` per row block (twice the
flops, ``X`` read from memory once), the softmax, one Allreduce of ``(d + 1) K + 1`` numbers and the step.
Timing rules are those of :func:`pgd.bench.common.interleaved_collective`: pgd's iteration and the GEMM are
timed in interleaved rounds (the same machine state for both), warm-up excluded, max over ranks, medians.
"""

from __future__ import annotations

import numpy as np

from pgd.bench.common import interleaved_collective
from pgd.comm.host import AllreduceCommunicator
from pgd.data import block_range
from pgd.local.multinomial import LocalMultinomialGradient
from pgd.optim.base import PlainGradientDescent
from pgd.runtime import launcher
from pgd.strategies.data_parallel import DataParallelObjective


def multinomial_gradient_bench(world, *, n: int, d: int, dtype: str, classes, repeats: int,
                               block_bytes: int) -> dict:
    """Seconds per pgd iteration and per local GEMM ``X W`` for every K in ``classes``, and their ratios."""
    rank, size = world.Get_rank(), world.Get_size()
    start, stop = block_range(n, size, rank)
    rng = np.random.default_rng(2000 + rank)
    X = rng.standard_normal((stop - start, d), dtype=np.float32).astype(dtype, copy=False)
    comm = AllreduceCommunicator(world)
    cases = []
    for k in classes:
        y = rng.integers(0, k, stop - start).astype(dtype)
        local = LocalMultinomialGradient(X, y, k, fit_intercept=True, xp=np, block_bytes=block_bytes)
        objective = DataParallelObjective(local, comm, n, 0.0, np, curvature=local.loss.curvature_bound)
        optimizer = PlainGradientDescent(objective, xp=np, lr=0.1)
        optimizer.start(np.zeros(objective.n_params))
        W = np.full((d, k), 0.01, dtype=dtype)
        scores = np.empty((stop - start, k), dtype=dtype)
        times = interleaved_collective(world, {"pgd": optimizer.step,
                                               "gemm": lambda: np.dot(X, W, out=scores)}, repeats)  # noqa: B023
        iteration, gemm = times["pgd"], times["gemm"]
        cases.append({"classes": int(k), "pgd_iteration": iteration, "local_gemm": gemm,
                      "ratio": iteration / gemm, "block_rows": local.block_rows})
    return {"n": n, "d": d, "dtype": dtype, "loss": "multinomial", "ranks": size, "block_bytes": block_bytes,
            "blas_threads": launcher.BLAS_THREADS_RESOLVED, "cases": cases}


def format_multinomial_bench(result: dict) -> str:
    """One line per K: pgd's iteration, one GEMM over this rank's X, their ratio."""
    lines = [f"gradient bench: {result['n']} x {result['d']} {result['dtype']} multinomial, {result['ranks']} "
             f"rank(s), BLAS threads {result['blas_threads']}"]
    for case in result["cases"]:
        lines.append(f"  K = {case['classes']:<4} pgd iteration {case['pgd_iteration'] * 1e3:9.2f} ms   one GEMM X W "
                     f"{case['local_gemm'] * 1e3:9.2f} ms   ratio {case['ratio']:5.2f} (blocks of "
                     f"{case['block_rows']} rows)")
    return "\n".join(lines)
