"""``--slow-rank R:FACTOR`` for the synchronous loop of :func:`pgd.training.sync.train` (a loop hook).

After each step, rank R sleeps ``FACTOR − 1`` times the compute time of that step, so the next
collective waits for it as it would for a slower machine. The asynchronous modes slow their worker step
directly (:class:`pgd.training.minibatch.MiniBatchStepper`).
"""

from __future__ import annotations

import time

from pgd.training.minibatch import slow_factor


class SlowRankHook:
    """Stretch this rank's compute time by ``factor`` after every step."""

    def __init__(self, objective, factor: float):
        self.objective = objective
        self.factor = factor
        self.seen = 0.0

    def after_step(self, iteration: int) -> None:
        """Sleep for the extra compute time of the step just taken; never asks to stop."""
        spent = self.objective.compute_seconds - self.seen
        if spent > 0:
            time.sleep(spent * (self.factor - 1.0))
        self.objective.compute_seconds += spent * (self.factor - 1.0)
        self.seen = self.objective.compute_seconds
        return None


def make_slow_rank_hook(cfg, world, optimizer):
    """A :class:`SlowRankHook` on the rank named by ``--slow-rank``, None elsewhere."""
    factor = slow_factor(cfg, world.Get_rank()) if cfg.slow_rank else 1.0
    return SlowRankHook(optimizer.objective, factor) if factor > 1.0 else None
