"""Proximal L1 (elastic net) support shared by the optimizers that take proximal steps.

The composite objective is ``F(params) = f(params) + α‖w‖₁`` where ``f`` is the smooth objective of the
strategy (loss + (λ/2)‖w‖²) and ``w = params[:-1]``; the intercept (last entry) is never penalised.
Everything here is elementwise on the parameter vector, and the one reduction (‖w‖₁) goes through
``objective.dot``, so it stays correct when parameters are split across ranks.
"""

from __future__ import annotations

import math

import numpy as np

from pgd.device.backend import host_copy_of
from pgd.errors import InputError
from pgd.optim.base import Optimizer


class ProximalMixin:
    """Soft-thresholding, the L1 value and the optimality measure for optimizers with ``--l1``.

    The penalty is ``α Σ_j κ_j |p_j|`` with per-coordinate factors ``κ`` from ``objective.l1_weights``
    (``1/σ_j`` in standardised coordinates, so that the penalty stays ``α‖w‖₁`` on the original scale) or
    ones; ``κ = 0`` for the intercept, which is never penalised.  Subclasses set ``supports_l1 = True``;
    others reject ``--l1`` with a one-line error.
    """

    supports_l1 = False

    def _setup_l1(self, l1: float) -> None:
        self.l1 = float(l1)
        if self.l1 and not self.supports_l1:
            raise InputError(f"--l1 needs --optimizer gd (ISTA), nesterov (FISTA), sgd or lbfgs (OWL-QN), not "
                             f"{self.name}", collective=True)

    def _l1_buffers(self) -> None:
        xp = self.xp
        weights = getattr(self.objective, "l1_weights", None)
        if weights is None:
            self._kappa = xp.ones_like(self.params)
            self._kappa[-1] = 0.0
        else:
            self._kappa = xp.array(weights, dtype=xp.float64, copy=True)
        self._abs = xp.empty_like(self.params)
        self._threshold = xp.empty_like(self.params)
        self._subgradient = xp.empty_like(self.params)

    def prox(self, params, step: float) -> None:
        """In place: soft-threshold every coordinate by ``step·α·κ_j`` (the intercept has ``κ = 0``)."""
        if not self.l1:
            return
        xp = self.xp
        xp.multiply(self._kappa, step * self.l1, out=self._threshold)
        magnitude = self._abs
        xp.abs(params, out=magnitude)
        xp.subtract(magnitude, self._threshold, out=magnitude)
        xp.maximum(magnitude, 0.0, out=magnitude)
        xp.copysign(magnitude, params, out=params)

    def l1_value(self, params) -> float:
        """``α Σ κ_j |p_j|`` (0 without L1), reduced through ``objective.dot``."""
        if not self.l1:
            return 0.0
        self.xp.abs(params, out=self._abs)
        return self.l1 * self.objective.dot(self._abs, self._kappa)

    def composite_gradient(self, params, grad):
        """The minimum-norm subgradient of ``F = f + α Σ κ_j|p_j|`` at ``params`` (``grad`` without L1):
        ``g_j + ακ_j sign(p_j)`` where ``p_j ≠ 0``, else ``soft(g_j, ακ_j)``.  A reused buffer."""
        if not self.l1:
            return grad
        xp, r = self.xp, self._subgradient
        xp.multiply(self._kappa, self.l1, out=self._threshold)
        xp.abs(grad, out=r)
        xp.subtract(r, self._threshold, out=r)
        xp.maximum(r, 0.0, out=r)
        xp.copysign(r, grad, out=r)
        moved = params != 0
        r[moved] = grad[moved] + (self._threshold * xp.sign(params))[moved]
        return r

    def composite_grad_norm(self) -> float:
        """Euclidean norm of :meth:`composite_gradient` at the current point."""
        r = self.composite_gradient(self.params, self.grad)
        return math.sqrt(max(self.objective.dot(r, r), 0.0))

    def optimality(self) -> float:
        """``‖∇F‖∞`` (the minimum-norm subgradient with L1) at the current point, in the optimizer's
        coordinates: the measure of the convergence test."""
        return self.objective.norm_inf(self.composite_gradient(self.params, self.grad))


def loss_resolution(objective) -> float:
    """Relative size of rounding in the objective's loss: ``8·eps`` of the data dtype (float64 default).

    Sufficient-decrease tests allow this much, so that at rounding level they neither reject good steps
    nor shrink the step towards zero.
    """
    dtype = getattr(getattr(objective, "local", None), "dtype", np.float64)
    return 8 * float(np.finfo(dtype).eps)


def host_copy(xp, array):
    """A host NumPy copy of a backend array (for state dictionaries)."""
    return np.array(host_copy_of(xp, array))


class Composite(ProximalMixin, Optimizer):
    """An optimizer whose reported ``loss`` is ``F = f + α‖w‖₁`` (``smooth`` holds ``f``)."""

    def __init__(self, objective, *, xp, lr: float, l1: float = 0.0):
        super().__init__(objective, xp=xp, lr=lr)
        self._setup_l1(l1)
        self.smooth = math.nan

    def start(self, params) -> float:
        self.smooth = super().start(params)
        self._l1_buffers()
        self.loss = self.smooth + self.l1_value(self.params)
        return self.loss

    def evaluate_composite(self, params, grad_out) -> tuple[float, float]:
        """``(f, F)`` at ``params``; the gradient of ``f`` goes to ``grad_out``."""
        smooth = self.evaluate(params, grad_out)
        return smooth, smooth + self.l1_value(params)

    def grad_norm(self) -> float:
        return self.composite_grad_norm()

    def _save(self, state: dict, **arrays) -> dict:
        state.update({key: host_copy(self.xp, value) if hasattr(value, "shape") else value
                      for key, value in arrays.items()})
        return state
