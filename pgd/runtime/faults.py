"""Test-only fault injection, read from ``PGD_TEST_*`` environment variables (never a user option).

Every test hook of pgd lives here, so the code under test calls one small method per hook:

- ``PGD_TEST_SLEEP_PER_ITER=S`` (every rank) or ``R:S`` (rank R only): sleep S seconds after every step or
  mini-batch update, so a test can deliver a signal mid-run or make one rank slow.
- ``PGD_TEST_CLOCK_SKEW=R:S``: rank R's clock reads S seconds ahead of the others (unsynchronised nodes).

Conventions
-----------
Variables are read once, when a run builds its :class:`Faults` (in-process tests may change them between
runs). Unset variables cost nothing on the hot path: :meth:`Faults.pause` returns at once.
"""

from __future__ import annotations

import os
import time

from pgd.runtime import settings


def _rank_value(text: str, rank: int) -> float:
    """``"S"`` -> S on every rank; ``"R:S"`` -> S on rank R and 0 elsewhere."""
    text = (text or "").strip()
    if not text:
        return 0.0
    if ":" in text:
        target, value = text.split(":", 1)
        return float(value) if int(target) == rank else 0.0
    return float(text)


class Faults:
    """This rank's injected faults (see the module docstring)."""

    def __init__(self, rank: int, environ=os.environ):
        self.sleep = _rank_value(settings.test_sleep_per_iter(environ), rank)
        skew = settings.test_clock_skew(environ)
        self.skew = _rank_value(skew, rank) if ":" in skew else 0.0

    def pause(self) -> None:
        """Sleep after a step when ``PGD_TEST_SLEEP_PER_ITER`` asks for it."""
        if self.sleep:
            time.sleep(self.sleep)

    def clock(self) -> float:
        """``time.monotonic()``, shifted on the rank named by ``PGD_TEST_CLOCK_SKEW``."""
        return time.monotonic() + self.skew
