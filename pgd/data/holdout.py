"""A seeded held-out selection of rows that does not depend on the number of ranks.

Row ``i`` (global index) is held out when ``u(seed, i) < fraction``, where ``u`` is a counter-based uniform
number (SplitMix64 of the seed and the index).  Each rank evaluates it for its own global row range only, so
the selection of a row is the same whatever rank holds it, and no rank reads another's rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["holdout_mask"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of ``values`` (uint64, wrapping arithmetic)."""
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def holdout_mask(start: int, stop: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows among the global rows ``start .. stop - 1``.

    Parameters
    ----------
    start, stop : int
        This rank's global row range.
    fraction : float
        Expected share of held-out rows, in (0, 1).
    seed : int
        Selection seed (the same on every rank).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    index = np.arange(start, stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(index))
    uniform = (key >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return uniform < fraction
