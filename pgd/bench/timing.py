"""Timing candidates against a floor in one run: interleaved rounds, warm-up excluded (no MPI here: a collective
caller passes its barrier and its max over ranks)."""

from __future__ import annotations

import time

__all__ = ["interleaved_samples"]


def interleaved_samples(candidates: dict, rounds: int, *, barrier=None, reduce_max=None,
                        settle: float = 0.0) -> dict:
    """Seconds of every candidate in each of ``rounds`` rounds, after one warm-up call of each.

    Every round calls each candidate once, in an order rotated from round to round, so every candidate meets
    the same machine state (a shared machine's load, the CPU's clock) and the ratios of one run can be trusted.

    Parameters
    ----------
    candidates : dict
        ``name -> callable`` (no arguments).
    rounds : int
        Timed rounds.
    barrier : callable, optional
        Called before each timed call (``world.Barrier``: all ranks start together).
    reduce_max : callable, optional
        ``seconds -> seconds``, e.g. the maximum over ranks.
    settle : float
        Seconds to sleep before each timed call.  With several BLAS threads, OpenBLAS's workers spin for tens
        of milliseconds after each multi-threaded call; without a pause they would compete for the cores
        with the next candidate's own threads (not a state a training loop on the compiled kernel meets).

    Returns
    -------
    dict
        ``name -> list of seconds`` (one per round).
    """
    names = list(candidates)
    for name in names:
        candidates[name]()
    samples = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if settle:
                time.sleep(settle)
            if barrier is not None:
                barrier()
            started = time.perf_counter()
            candidates[name]()
            seconds = time.perf_counter() - started
            samples[name].append(reduce_max(seconds) if reduce_max is not None else seconds)
    return samples
