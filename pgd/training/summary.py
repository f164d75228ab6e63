"""One run summary, shared by ``pgd train``'s synchronous loop and the runners with loops of their own
(async, shm, local SGD): the timing split, rank 0's printout, and the ``--require-convergence`` refusal.

Conventions
-----------
Numbers handed in are already agreed over the ranks (maxima over ranks for times), so every rank builds the
same summary; only rank 0 prints.
"""

from __future__ import annotations

import sys

from pgd.errors import NotConvergedError
from pgd.outputs.progress import format_summary


def timing(wall: float, compute: float, comm: float, other: float, steps: int) -> dict:
    """The summary's ``timing``: wall, compute, communication and other seconds, and wall per step."""
    return {"wall": wall, "compute": compute, "comm": comm, "other": other, "per_iteration": wall / max(steps, 1)}


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
