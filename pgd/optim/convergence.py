"""What ``converged`` means, and what a run says when it is not.

One optimality test decides ``converged``, in every mode: ``‖∇F(p)‖∞ ≤ tol · max(1, ‖∇F(p₀)‖∞)`` in the
optimizer's coordinates (standardised unless ``--no-standardize``; ``∇F`` is the minimum-norm subgradient
with ``--l1``; ``p₀`` the start), with ``tol`` never below the data dtype's rounding floor
(:func:`effective_tol`).  Every other stop (the iteration or update budget, ``--rtol``, a line search at
rounding level, ``--target-loss``) ends a run without claiming convergence; an unconverged run prints one
warning line with the measure reached and a next step (:func:`unconverged_warning`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The optimality test never asks for less than this many rounding units of the data dtype (relative to
#: the start): below it the gradient of float32 data is rounding noise.
ROUNDING_FLOOR_ULPS = 8

#: A fixed-step method has diverged when its objective exceeds the starting value by this factor.
DIVERGENCE_FACTOR = 1e3


def effective_tol(tol: float, dtype) -> float:
    """``tol``, but at least :data:`ROUNDING_FLOOR_ULPS` units of the data dtype's rounding."""
    return max(float(tol), ROUNDING_FLOOR_ULPS * float(np.finfo(dtype).eps))


@dataclass(frozen=True)
class OptimalityTest:
    """``optimality ≤ tol · reference`` with ``reference = max(1, ‖∇F(p₀)‖∞)``; ``stops`` is False for
    ``--tol 0``, which disables the stop (the verdict ``converged`` still uses the rounding floor)."""

    tol: float
    reference: float
    stops: bool = True

    @classmethod
    def at_start(cls, tol: float, dtype, start_optimality: float) -> "OptimalityTest":
        """The test of a run whose start point has the optimality measure ``start_optimality``."""
        reference = max(1.0, start_optimality) if np.isfinite(start_optimality) else 1.0
        return cls(effective_tol(tol, dtype), reference, stops=float(tol) > 0)

    def stops_at(self, optimality: float) -> bool:
        """Whether the loop stops here (the test holds and ``--tol`` is not 0)."""
        return self.stops and self.holds(optimality)

    @property
    def target(self) -> float:
        """The largest optimality measure that counts as converged."""
        return self.tol * self.reference

    def holds(self, optimality: float) -> bool:
        """Whether ``optimality`` passes."""
        return optimality <= self.target

    def describe(self, optimality: float) -> str:
        """``optimality X <= tol T x R`` (the stop reason of a converged run)."""
        return f"optimality {optimality:.3e} <= tol {self.tol:g} x {self.reference:.3g}"

    def facts(self, optimality: float) -> dict:
        """The summary's and the model file's record of the test."""
        return {"optimality": optimality, "optimality_target": self.target, "tol_effective": self.tol}


def unconverged_warning(test: OptimalityTest, optimality: float, iterations: int, stop_reason: str, *,
                        method: str, dtype, standardized: bool, budget_option: str = "--max-iter") -> str:
    """The one warning line of a run that ended unconverged, with a concrete next step."""
    steps = []
    if "budget" in stop_reason:
        steps.append(f"raise {budget_option}")
    if method not in ("lbfgs", "cholesky", "cd", "sgd"):
        steps.append("use --optimizer lbfgs")
    if not standardized:
        steps.append("drop --no-standardize")
    if np.dtype(dtype) == np.float32 and "budget" not in stop_reason:
        steps.append("use --dtype float64")
    if not steps:
        steps.append("loosen --tol")
    return (f"not converged: optimality {optimality:.3e} > {test.target:.3e} (tol {test.tol:g} x "
            f"{test.reference:.3g}) after {iterations} iterations ({stop_reason}); {' or '.join(steps)}")
