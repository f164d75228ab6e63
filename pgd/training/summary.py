"""One run summary, shared by ``pgd train``'s synchronous loop and the runners with loops of their own
(async, shm, local SGD): the timing split, rank 0's printout, and the ``--require-convergence`` refusal.

Conventions
-----------
Numbers handed in are already agreed over the ranks (maxima over ranks for times), so every rank builds the
same summary; only rank 0 prints.
"""

from __future__ import annotations

import resource
import sys

import numpy as np

from pgd.errors import NotConvergedError
from pgd.outputs.progress import format_summary


def timing(wall: float, compute: float, comm: float, other: float, steps: int, setup: float | None = None) -> dict:
    """The summary's ``timing``: wall, compute, communication and other seconds of the loop, wall per step,
    and (when given) the set-up before the loop (data, standardisation, Gram reduction, step size)."""
    split = {"wall": wall, "compute": compute, "comm": comm, "other": other, "per_iteration": wall / max(steps, 1)}
    if setup is not None:
        split["setup"] = setup
    return split


def timing_over_ranks(world, wall: float, compute: float, comm: float, steps: int,
                      setup: float | None = None) -> dict:
    """:func:`timing` from every rank's own seconds (collective): the split of the rank that computed
    longest, so that its parts add up to its wall time, and beside it ``compute_min``, the least compute of
    any rank (how unequal the shares were).  Maxima over ranks of each part would not add up: the ranks that
    wait for the slowest count their wait as communication.  ``setup`` is a maximum over ranks already."""
    mine = np.array([wall, compute, comm], dtype=np.float64)
    every = np.empty((world.Get_size(), 3), dtype=np.float64)
    world.Allgather(mine, every)
    wall, compute, comm = every[int(np.argmax(every[:, 1]))].tolist()
    split = timing(wall, compute, comm, max(wall - compute - comm, 0.0), steps, setup)
    split["compute_min"] = float(every[:, 1].min())
    return split


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes (Linux reports ``ru_maxrss`` in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def print_summary(summary: dict) -> None:
    """Rank 0: the summary on standard output, each warning as one ``pgd: warning:`` line on standard error."""
    print(format_summary(summary), flush=True)
    for text in summary["warnings"]:
        print(f"pgd: warning: {text}", file=sys.stderr, flush=True)


def refuse_unconverged(cfg, converged: bool, optimality: float, target: float, outcome: str) -> None:
    """``--require-convergence``: fail on every rank (exit 3) when the run ended unconverged; ``outcome`` says
    what was (not) written."""
    if cfg.require_convergence and not converged:
        raise NotConvergedError(f"not converged (--require-convergence): optimality {optimality:.3e} > "
                                f"{target:.3e}; {outcome}", collective=True)
