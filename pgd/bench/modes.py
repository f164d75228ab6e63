"""``pgd bench modes``: data vs feature vs hybrid parallelism, measured and estimated with the α-β model.

One iteration is what the training loop does: a gradient-descent step (one evaluation) and the gradient
norm of the stopping test. The α-β model prices an Allreduce of ``m`` bytes over ``p`` ranks as
``⌈log2 p⌉·α + 2·(p−1)/p·m·β`` (latency of a tree, bandwidth of a ring).

Conventions
-----------
- α and β (unless given) come from batches of back-to-back 8-byte and 4 MiB Allreduces: the time of a batch
  (max over ranks) divided by its length, the fastest of the repeats. One Allreduce timed alone after a
  ``Barrier`` measures mostly how late the last rank leaves the barrier, which on a busy machine is
  milliseconds; a batch spreads that over its calls, and the minimum keeps the least disturbed batch.
- Each timed iteration also records its own communication time, so every row's communication is the median
  over the same samples as its iteration time (max over ranks in each sample) and never exceeds it.
- An α-β estimate above the measured iteration is not shown as a number: the model cannot describe that run
  (a disturbed fit, or α and β given for another machine); the row says so instead.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from pgd.bench.common import time_collective
from pgd.comm.host import AllreduceCommunicator
from pgd.data import block_range
from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss
from pgd.optim.base import PlainGradientDescent
from pgd.strategies.data_parallel import DataParallelObjective
from pgd.strategies.grid import GridCommunicators, GridObjective

_FIT_BYTES = 4 << 20


def allreduce_estimate(alpha: float, beta: float, ranks: int, nbytes: int) -> float:
    """α-β seconds of one Allreduce of ``nbytes`` over ``ranks`` (0 for one rank)."""
    if ranks <= 1:
        return 0.0
    return math.ceil(math.log2(ranks)) * alpha + 2.0 * (ranks - 1) / ranks * nbytes * beta


def _fastest_per_call(world, work, calls: int, repeats: int) -> float:
    """Seconds per call of ``work()``: the fastest of ``repeats`` batches of ``calls`` back-to-back calls
    (each batch timed as the max over ranks after a ``Barrier``, after one warm-up batch)."""
    def batch():
        for _ in range(calls):
            work()
    return min(time_collective(world, batch, 1) for _ in range(repeats)) / calls


def fit_alpha_beta(world, repeats: int) -> tuple[float, float]:
    """α and β from batches of 8-byte and 4 MiB Allreduces over ``world`` (zeros on one rank)."""
    size = world.Get_size()
    if size == 1:
        return 0.0, 0.0
    small, big = np.zeros(1), np.zeros(_FIT_BYTES // 8)
    t_small = _fastest_per_call(world, lambda: world.Allreduce(MPI.IN_PLACE, small), 50, repeats)
    t_big = _fastest_per_call(world, lambda: world.Allreduce(MPI.IN_PLACE, big), 4, repeats)
    alpha = t_small / math.ceil(math.log2(size))
    beta = max(t_big - t_small, 0.0) / (2.0 * (size - 1) / size * big.nbytes)
    return alpha, beta


def mode_estimate(mode_grid: tuple[int, int], n: int, d: int, itemsize: int, alpha: float,
                  beta: float) -> tuple[float, int]:
    """(α-β seconds, bytes per rank) of one iteration's communication on a ``P × Q`` grid.

    ``P × 1`` is data mode: one Allreduce of ``d + 2`` float64 (the norm needs none). Otherwise: partial
    predictions (``⌈n/P⌉`` items over Q), gradient block (``⌈d/Q⌉`` float64 over P), three scalars and the
    norm's one scalar over all ranks.
    """
    rows, cols = mode_grid
    size = rows * cols
    if cols == 1:
        nbytes = (d + 2) * 8
        return allreduce_estimate(alpha, beta, size, nbytes), nbytes if size > 1 else 0
    parts = [(cols, math.ceil(n / rows) * itemsize), (rows, math.ceil(d / cols) * 8), (size, 24), (size, 8)]
    seconds = sum(allreduce_estimate(alpha, beta, ranks, nbytes) for ranks, nbytes in parts)
    return seconds, sum(nbytes for ranks, nbytes in parts if ranks > 1)


def _objective(world, grid: tuple[int, int], n: int, d: int, dtype, seed: int):
    """A data or grid objective over random blocks of an ``n × d`` problem (logistic loss)."""
    rows, cols = grid
    cart = world.Create_cart([rows, cols], periods=[False, False], reorder=False)
    p, q = cart.Get_coords(cart.Get_rank())
    r0, r1 = block_range(n, rows, p)
    c0, c1 = block_range(d, cols, q)
    rng = np.random.default_rng([seed, cart.Get_rank()])
    X = rng.standard_normal((r1 - r0, c1 - c0)).astype(dtype)
    y = (rng.random(r1 - r0) < 0.5).astype(dtype)
    loss = get_loss("logistic")
    if cols == 1:
        local = LocalLinearGradient(X, y, loss, fit_intercept=True, xp=np)
        return DataParallelObjective(local, AllreduceCommunicator(cart), n, 0.0, np, loss.curvature_bound)
    comms = GridCommunicators("allreduce", AllreduceCommunicator(cart.Sub([False, True])),
                              AllreduceCommunicator(cart.Sub([True, False])), AllreduceCommunicator(cart))
    return GridObjective(X, y, loss, comms, coords=(p, q), n_global=n, d_global=d, col_range=(c0, c1),
                         l2=0.0, fit_intercept=True, xp=np)


def _parse_shapes(text: str) -> list[tuple[str, int, int]]:
    shapes = []
    for item in text.split(","):
        name, _, dims = item.partition("=")
        n, d = (int(v) for v in dims.lower().split("x"))
        shapes.append((name.strip(), n, d))
    return shapes


def time_iterations(world, iteration, comm, repeats: int) -> tuple[float, float]:
    """Median seconds of ``iteration()`` and median of the communication seconds ``comm`` counted during it,
    each sample the max over ranks (after one warm-up); the second never exceeds the first."""
    iteration()
    samples = np.empty((repeats, 2))
    for sample in samples:
        world.Barrier()
        started, comm_before = MPI.Wtime(), comm.seconds
        iteration()
        sample[:] = MPI.Wtime() - started, comm.seconds - comm_before
    world.Allreduce(MPI.IN_PLACE, samples, op=MPI.MAX)
    seconds, comm_seconds = np.median(samples, axis=0)
    return float(seconds), float(comm_seconds)


def modes_bench(world, *, shapes: str, dtype: str, repeats: int, alpha: float | None = None,
                beta: float | None = None) -> dict:
    """Median seconds per iteration of each mode on each problem, with the communication seconds measured
    in the same iterations and the α-β estimate (``estimate_plausible``: not above the iteration)."""
    size = world.Get_size()
    fitted = fit_alpha_beta(world, repeats)
    alpha = fitted[0] if alpha is None else alpha
    beta = fitted[1] if beta is None else beta
    grids = {"data": (size, 1), "feature": (1, size), "hybrid": tuple(MPI.Compute_dims(size, 2))}
    itemsize = np.dtype(dtype).itemsize
    rows = []
    for name, n, d in _parse_shapes(shapes):
        for mode, grid in grids.items():
            objective = _objective(world, grid, n, d, dtype, seed=7)
            optimizer = PlainGradientDescent(objective, xp=np, lr=0.1)
            optimizer.start(objective.zeros())

            def iteration():
                optimizer.step()
                optimizer.grad_norm()

            seconds, comm = time_iterations(world, iteration, objective.comm, repeats)
            estimate, nbytes = mode_estimate(grid, n, d, itemsize, alpha, beta)
            rows.append({"problem": name, "n": n, "d": d, "mode": mode, "grid": f"{grid[0]}x{grid[1]}",
                         "seconds_per_iteration": seconds, "comm_seconds": comm,
                         "estimate_comm_seconds": estimate, "estimate_plausible": estimate <= seconds,
                         "bytes_per_iteration": nbytes})
            objective = optimizer = None  # free this problem before the next one
    return {"ranks": size, "dtype": dtype, "repeats": repeats, "alpha": alpha, "beta": beta,
            "alpha_beta_measured": fitted, "results": rows}


def format_modes_bench(result: dict) -> str:
    """A table: problem, mode, grid, measured time and communication, α-β estimate, bytes; a note under it
    when an estimate exceeds its measured iteration (not printed as a number)."""
    lines = [f"modes bench: {result['ranks']} rank(s), {result['dtype']}, median of {result['repeats']}; "
             f"alpha {result['alpha'] * 1e6:.2f} us, beta {result['beta'] * 1e9:.3f} ns/B "
             f"({1e-9 / result['beta'] if result['beta'] else float('inf'):.2f} GB/s)",
             f"  {'problem':<16} {'mode':<8} {'grid':<5} {'ms/iter':>9} {'comm ms':>9} {'a-b est ms':>10} "
             f"{'B/iter':>9}"]
    implausible = False
    for row in result["results"]:
        plausible = row["estimate_comm_seconds"] <= row["seconds_per_iteration"]
        implausible |= not plausible
        estimate = f"{row['estimate_comm_seconds'] * 1e3:10.3f}" if plausible else f"{'> iter *':>10}"
        lines.append(f"  {row['problem'] + ' ' + str(row['n']) + 'x' + str(row['d']):<16} {row['mode']:<8} "
                     f"{row['grid']:<5} {row['seconds_per_iteration'] * 1e3:9.3f} {row['comm_seconds'] * 1e3:9.3f} "
                     f"{estimate} {row['bytes_per_iteration']:9d}")
    if implausible:
        lines += ["  * the a-b estimate exceeds the whole measured iteration: alpha and beta do not describe this run",
                  "    (a busy machine disturbed the fit, or they belong to another machine); rerun on an idle "
                  "machine or pass --alpha/--beta"]
    return "\n".join(lines)
