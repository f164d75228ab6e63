"""``pgd bench straggler`` (the command is in :mod:`pgd.cli.bench`): synchronous, stale-synchronous and
asynchronous training with one slow rank.

Every configuration runs ``--mode async`` (rank 0 the server, the others workers, the last one slowed
down ``--slow-factor`` times) on the same generated least-squares data with the same step size, until the
monitored loss reaches a target ``f* + fraction · (f(0) − f*)`` (f* from a serial least-squares solve):
staleness bound 0 (bulk-synchronous: every step waits for the slow worker), a few SSP bounds, and none
(fully asynchronous). It reports the median time to the target over ``--repeats`` runs (after one warm-up
run) and plots the monitored loss against wall time (PNG, matplotlib imported only then).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics

import numpy as np

from pgd.data.writer import atomic_h5_file, create_xy
from pgd.device.backend import cpu_backend
from pgd.errors import PgdError
from pgd.fileio import atomic_path
from pgd.training.async_ps import run_async

SUMMARY_KEYS = ("updates", "final_loss", "staleness_max", "staleness_mean", "clock_gap_max", "wait_seconds")


def parse_bounds(text: str) -> list:
    """``"0,1,4,none"`` -> ``[0, 1, 4, "none"]``."""
    return [item if item == "none" else int(item) for item in (part.strip() for part in text.split(","))]


def _label(bound) -> str:
    return {0: "sync (s=0)", "none": "async (s=none)"}.get(bound, f"SSP (s={bound})")


def _problem(path: str, n: int, d: int, seed: int, fraction: float, condition: float) -> dict:
    """Rank 0: write the dataset; f(0), the optimum f* and the target loss.

    Columns are standard normal scaled from 1 down to ``1/sqrt(condition)``, so the Hessian's condition
    number is about ``condition`` and SGD needs many updates (a stand-in for real, badly scaled data).
    """

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.logspace(0, -0.5 * np.log10(condition), d)
    y = X @ rng.standard_normal(d) + 0.5 + 0.1 * rng.standard_normal(n)
    with atomic_h5_file(path) as handle:
        x_data, y_data = create_xy(handle, n, d, np.dtype(np.float64), None, {"task": "regression"})
        x_data[...], y_data[...] = X, y
    design = np.hstack([X, np.ones((n, 1))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    optimum = 0.5 * float(np.mean((design @ solution - y) ** 2))
    start = 0.5 * float(np.mean(y ** 2))
    return {"f0": start, "f_star": optimum, "target": optimum + fraction * (start - optimum),
            "condition": condition}


def _time_to(history: dict, target: float):
    """Seconds and updates when the monitored loss first reached ``target`` (None, None if never)."""
    for loss, updates, seconds in zip(history["loss"], history["updates"], history["time"]):
        if loss <= target:
            return seconds, int(updates)
    return None, None


def straggler_bench(world, *, n: int, d: int, bounds: list, slow_factor: float, repeats: int,
                    fraction: float, local_batch: int, updates: int, out_dir: str, make_config,
                    condition: float = 100.0, seed: int = 0) -> dict:
    """Run the configurations on every rank; rank 0 returns the full results (others: None).

    Parameters
    ----------
    world : mpi4py.MPI.Comm
        At least 3 ranks: rank 0 serves, the others work; the last rank is the slow one.
    bounds : list
        Staleness bounds to compare (``0`` = synchronous, ``"none"`` = fully asynchronous).
    make_config : callable
        ``make_config(arguments) -> RunConfig``: the resolved, silenced ``pgd train`` configuration of a
        list of ``pgd train`` arguments (the CLI passes its own parser, so a run is exactly ``pgd train``).
    """

    rank, size = world.Get_rank(), world.Get_size()
    if size < 3:
        raise PgdError("pgd bench straggler needs at least 3 ranks (1 server, 2 workers)", collective=True)
    path = os.path.join(out_dir, "straggler-data.h5")
    problem = None
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        problem = _problem(path, n, d, seed, fraction, condition)
    problem = world.bcast(problem, root=0)
    slow = size - 1
    common = [path, "--loss", "squared", "--mode", "async", "--device", "cpu", "--local-batch",
              str(local_batch), "--updates", str(updates), "--target-loss", repr(problem["target"]),
              "--slow-rank", f"{slow}:{slow_factor}", "--seed", str(seed)]
    backend = cpu_backend()
    lr = None
    runs = {}
    for bound in [bounds[0]] + list(bounds):  # the first run is a warm-up
        cfg = make_config(common + ["--staleness", str(bound), "--lr", repr(lr) if lr else "auto"])
        with contextlib.redirect_stdout(io.StringIO()):
            summaries = [run_async(cfg, world, backend) for _ in range(repeats if lr else 1)]
        if lr is None:
            lr = summaries[0]["lr"]
            continue
        runs[_label(bound)] = summaries
    if rank != 0:
        return None
    results = {"n": n, "d": d, "ranks": size, "slow_rank": slow, "slow_factor": slow_factor, "lr": lr,
               "local_batch": local_batch, "repeats": repeats, **problem, "configs": {}}
    for label, summaries in runs.items():
        reached = [_time_to(summary["history"], problem["target"]) for summary in summaries]
        times = [seconds for seconds, _ in reached if seconds is not None]
        median_run = sorted(range(len(summaries)), key=lambda i: summaries[i]["timing"]["wall"])[
            len(summaries) // 2]
        entry = {key: summaries[median_run].get(key) for key in SUMMARY_KEYS}
        entry.update(time_to_target=statistics.median(times) if len(times) == len(summaries) else None,
                     updates_to_target=reached[median_run][1], times_to_target=times,
                     wall=statistics.median(summary["timing"]["wall"] for summary in summaries),
                     history={key: summaries[median_run]["history"][key] for key in ("time", "loss")})
        results["configs"][label] = entry
    return results


def plot_straggler(results: dict, path: str) -> str:
    """Plot the monitored loss minus f* against wall time for each configuration (PNG)."""
    import matplotlib  # noqa: PLC0415 - optional, imported only to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, entry in results["configs"].items():
        gap = np.maximum(np.asarray(entry["history"]["loss"]) - results["f_star"], 1e-12)
        axes.semilogy(entry["history"]["time"], gap, label=label, marker=".", markersize=3)
    axes.axhline(results["target"] - results["f_star"], color="grey", linestyle="--", label="target")
    axes.set_xlabel("wall time (s)")
    axes.set_ylabel("monitored loss − f*")
    axes.set_title(f"{results['ranks'] - 1} workers, rank {results['slow_rank']} "
                   f"{results['slow_factor']:g}x slower (n={results['n']}, d={results['d']})")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def format_straggler(results: dict) -> str:
    """The table of time to the target loss."""
    lines = [f"pgd bench straggler: {results['ranks'] - 1} workers + 1 server, rank {results['slow_rank']} "
             f"{results['slow_factor']:g}x slower; n={results['n']} d={results['d']} batch "
             f"{results['local_batch']} lr {results['lr']:.4g}; target loss {results['target']:.6g} "
             f"(f* {results['f_star']:.6g}); median of {results['repeats']}",
             f"{'configuration':<16} {'time to target':>15} {'updates':>8} {'staleness max/mean':>19} "
             f"{'wait (max)':>11}"]
    for label, entry in results["configs"].items():
        reached = f"{entry['time_to_target']:.3f} s" if entry["time_to_target"] is not None else "not reached"
        lines.append(f"{label:<16} {reached:>15} {entry['updates_to_target'] or '-':>8} "
                     f"{entry['staleness_max']:>9}/{entry['staleness_mean']:<9.2f} "
                     f"{entry['wait_seconds']:>9.3f} s")
    return "\n".join(lines)


def write_results(results: dict, out_dir: str, plot: bool = True) -> list[str]:
    """Write ``straggler.json`` (and ``straggler.png``) into ``out_dir``; returns the paths."""

    paths = [os.path.join(out_dir, "straggler.json")]
    with atomic_path(paths[0]) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    if plot:
        paths.append(plot_straggler(results, os.path.join(out_dir, "straggler.png")))
    return paths
