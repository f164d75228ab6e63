"""``pgd bench kernels``: device copy bandwidth, the two-pass gradient and the fused kernel side by side.

Bandwidths are effective: the bytes of ``X`` read once divided by the time (the copy counts the bytes read
and written). Times are medians of CUDA-event timings after one warm-up. The whole training step (fused
gradient, host staging or CUDA-aware Allreduce, update) is timed per iteration on the run's ranks.
"""

from __future__ import annotations

import statistics

import numpy as np

from pgd.bench.common import time_collective
from pgd.comm.device import make_device_communicator
from pgd.data import block_range
from pgd.device.kernels import FusedGradient
from pgd.errors import PgdError
from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss
from pgd.optim import make_optimizer
from pgd.strategies.data_parallel import DataParallelObjective, device_finish


def time_device(cupy, work, repeats: int) -> float:
    """Median seconds of ``work()`` over ``repeats`` runs, timed with CUDA events (one warm-up)."""
    work()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    samples = []
    for _ in range(repeats):
        start.record()
        work()
        stop.record()
        stop.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(samples)


def kernel_bench(cupy, *, n: int, d: int, dtype: str, loss: str, repeats: int) -> dict:
    """Copy, two-pass and fused gradient times for an ``(n, d)`` matrix on the current GPU."""

    rng = cupy.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=cupy.float32).astype(dtype)
    w = (rng.standard_normal(d, dtype=cupy.float32) / np.sqrt(d)).astype(dtype)
    y = (X @ w > 0).astype(dtype)
    params = cupy.concatenate([w.astype(cupy.float64), cupy.zeros(1)])   # [w, b] as the optimizers hold it
    copy = cupy.empty_like(X)
    out = cupy.zeros(d + 2, dtype=cupy.float64)
    pointwise = get_loss(loss)
    fused = FusedGradient(cupy, X, y, fit_intercept=True)

    def two_pass():
        residual = pointwise.derivative(y, X @ w, cupy)
        return X.T @ residual

    nbytes = X.nbytes
    t_copy = time_device(cupy, lambda: cupy.copyto(copy, X), repeats)
    t_two = time_device(cupy, two_pass, repeats)
    t_fused = time_device(cupy, lambda: fused(params, loss, out), repeats)
    copy_bw = 2 * nbytes / t_copy
    result = {"n": n, "d": d, "dtype": dtype, "loss": loss, "X_bytes": nbytes, "copy_seconds": t_copy,
              "copy_TBps": copy_bw / 1e12, "two_pass_seconds": t_two, "fused_seconds": t_fused}
    for key, seconds in (("two_pass", t_two), ("fused", t_fused)):
        result[f"{key}_TBps"] = nbytes / seconds / 1e12
        result[f"{key}_fraction_of_copy"] = nbytes / seconds / copy_bw
    result["one_pass_at_copy_seconds"] = nbytes / copy_bw
    return result


def step_bench(world, backend, *, n: int, d: int, dtype: str, loss: str, repeats: int, comm: str,
               cuda_aware: str) -> dict:
    """Seconds per gradient-descent iteration (fused gradient + communicator + update) on every rank."""

    cupy = backend.xp
    start, stop = block_range(n, world.Get_size(), world.Get_rank())
    rng = cupy.random.default_rng(1 + world.Get_rank())
    X = rng.standard_normal((stop - start, d), dtype=cupy.float32).astype(dtype)
    y = (X[:, 0] > 0).astype(dtype)
    pointwise = get_loss(loss)
    local = LocalLinearGradient(X, y, pointwise, fit_intercept=True, xp=cupy, block_bytes=X.nbytes + 1)
    communicator = make_device_communicator(comm, world, backend, cuda_aware)
    objective = DataParallelObjective(local, communicator, n, 0.0, cupy, curvature=pointwise.curvature_bound,
                                      finish=device_finish(backend))
    optimizer = make_optimizer("gd", objective, xp=cupy, lr=0.01)   # what pgd train runs by default
    optimizer.start(cupy.zeros(d + 1))

    def step():   # a step ends with the loss and |grad| on the host, as the training loop needs them
        optimizer.step()
        optimizer.grad_norm()

    seconds = time_collective(world, step, repeats)
    return {"n": n, "d": d, "ranks": world.Get_size(), "comm": communicator.name,
            "cuda_aware": communicator.cuda_aware, "step_seconds": seconds, "kernel": local.kernel}


def format_kernel_bench(results: list[dict], steps: list[dict]) -> str:
    """A table: copy, two-pass and fused as TB/s and fraction of copy bandwidth; then per-step times."""
    lines = ["kernel bench (effective TB/s = bytes of X once / time; copy counts read + write)",
             f"{'dtype':<8}{'loss':<9}{'n':>10}{'d':>6}  {'copy TB/s':>9}  {'two-pass TB/s':>13} {'frac':>5}  "
             f"{'fused TB/s':>10} {'frac':>5}  {'speed-up':>8}"]
    for r in results:
        lines.append(f"{r['dtype']:<8}{r['loss']:<9}{r['n']:>10}{r['d']:>6}  {r['copy_TBps']:9.3f}  "
                     f"{r['two_pass_TBps']:13.3f} {r['two_pass_fraction_of_copy']:5.2f}  "
                     f"{r['fused_TBps']:10.3f} {r['fused_fraction_of_copy']:5.2f}  "
                     f"{r['two_pass_seconds'] / r['fused_seconds']:7.2f}x")
    for s in steps:
        lines.append(f"step n={s['n']} d={s['d']} on {s['ranks']} rank(s), comm {s['comm']} "
                     f"[{s['cuda_aware']}]: {s['step_seconds'] * 1e6:.1f} us/iteration")
    return "\n".join(lines)


def run_kernel_bench(world, backend, *, elements: int, ds, dtypes, losses, repeats: int, step_sizes,
                     comm: str, cuda_aware: str) -> dict:
    """Everything ``pgd bench kernels`` prints (kernels on rank 0's GPU; steps on all ranks)."""
    if not backend.is_gpu:
        raise PgdError("pgd bench kernels needs CuPy and a CUDA device (install pgd[gpu])", collective=True)
    results = []
    if world.Get_rank() == 0:
        for dtype in dtypes:
            for loss in losses:
                for d in ds:
                    results.append(kernel_bench(backend.xp, n=max(1, elements // d), d=d, dtype=dtype, loss=loss,
                                                repeats=repeats))
    world.Barrier()
    steps = [step_bench(world, backend, n=rows, d=64, dtype="float32", loss="squared", repeats=repeats,
                        comm=comm, cuda_aware=cuda_aware) for rows in step_sizes]
    return {"kernels": results, "steps": steps}
