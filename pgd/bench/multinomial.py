"""``pgd bench gradient --loss multinomial``: one iteration of a K-class multinomial fit against one GEMM over X.

The floor of a one-pass gradient is reading ``X`` once while multiplying it by a (d, K) matrix: one GEMM
``X W`` over this rank's rows.  pgd's iteration runs on the compiled one-pass kernel
(:mod:`pgd.local.cpu_multinomial`, where numba can run it) and on the blocked path (``X_b W`` and ``X_bᵀ R_b``
per row block: twice the flops, ``X`` read from memory once), each with the softmax, one Allreduce of
``(d + 1) K + 1`` numbers and the step; both are timed for every K, whatever ``PGD_CPU_KERNEL=auto`` would pick.
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
        W = np.full((d, k), 0.01, dtype=dtype)
        scores = np.empty((stop - start, k), dtype=dtype)
        candidates, kernels = {"gemm": lambda: np.dot(X, W, out=scores)}, {}  # noqa: B023
        for name, choice in (("fused_iteration", "fused"), ("blocked_iteration", "blocked")):
            local = LocalMultinomialGradient(X, y, k, fit_intercept=True, xp=np, block_bytes=block_bytes,
                                             host_kernel=choice)
            objective = DataParallelObjective(local, comm, n, 0.0, np, curvature=local.loss.curvature_bound)
            optimizer = PlainGradientDescent(objective, xp=np, lr=0.1)
            optimizer.start(np.zeros(objective.n_params))
            kernels[name] = local.kernel
            if choice == "blocked" or "numba" in local.kernel:
                candidates[name] = optimizer.step
        times = interleaved_collective(world, candidates, repeats)
        gemm = times["gemm"]
        case = {"classes": int(k), "local_gemm": gemm, "kernels": kernels, "block_rows": local.block_rows}
        for name in ("fused_iteration", "blocked_iteration"):
            if name in times:
                case[name], case[name.replace("iteration", "ratio")] = times[name], times[name] / gemm
        cases.append(case)
    return {"n": n, "d": d, "dtype": dtype, "loss": "multinomial", "ranks": size, "block_bytes": block_bytes,
            "blas_threads": launcher.BLAS_THREADS_RESOLVED, "cases": cases}


def format_multinomial_bench(result: dict) -> str:
    """One line per K: pgd's iteration on the compiled kernel and on the blocked path, one GEMM over this
    rank's X, and the ratios."""
    lines = [f"gradient bench: {result['n']} x {result['d']} {result['dtype']} multinomial, {result['ranks']} "
             f"rank(s), BLAS threads {result['blas_threads']}"]
    for case in result["cases"]:
        fused = (f"compiled kernel {case['fused_iteration'] * 1e3:8.2f} ms ({case['fused_ratio']:4.2f}x)"
                 if "fused_iteration" in case else f"(no compiled kernel: {case['kernels']['fused_iteration']})")
        lines.append(f"  K = {case['classes']:<4} {fused}   blocked GEMMs {case['blocked_iteration'] * 1e3:8.2f} ms "
                     f"({case['blocked_ratio']:4.2f}x, blocks of {case['block_rows']} rows)   one GEMM X W "
                     f"{case['local_gemm'] * 1e3:8.2f} ms")
    return "\n".join(lines)
