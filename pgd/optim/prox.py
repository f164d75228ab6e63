"""Proximal L1 (elastic net) support shared by the optimizers that take proximal steps.

The composite objective is ``F(params) = f(params) + α‖w‖₁`` where ``f`` is the smooth objective of the
strategy (loss + (λ/2)‖w‖²) and ``w = params[:-1]``; the intercept (last entry) is never penalised.
Everything here is elementwise on the parameter vector, and the one reduction (‖w‖₁) goes through
``objective.dot``, so it stays correct when parameters are split across ranks.
"""

from __future__ import annotations

import math

import numpy as np

from pgd.errors import InputError
from pgd.optim import Optimizer


def option(cfg, name: str, default):
    """Value of option ``name`` in ``cfg`` (a RunConfig or None), ``default`` when absent."""
    if cfg is None:
        return default
    value = getattr(cfg, name, None)
    return default if value is None else value


class ProximalMixin:
    """Soft-thresholding, the L1 value and the optimality measure for optimizers with ``--l1``.

    Subclasses set ``supports_l1 = True``; others reject ``--l1`` with a one-line error.
    """

    supports_l1 = False

    def _setup_l1(self) -> None:
        self.l1 = float(option(self.cfg, "l1", 0.0))
        if self.l1 and not self.supports_l1:
            raise InputError(f"--l1 needs --optimizer gd (ISTA), nesterov (FISTA) or sgd, not {self.name}",
                             collective=True)

    def _l1_buffers(self) -> None:
        xp = self.xp
        self._mask = xp.ones_like(self.params)
        self._mask[-1] = 0.0
        self._abs = xp.empty_like(self.params)

    def prox(self, params, step: float) -> None:
        """In place: soft-threshold ``w`` by ``step·α`` (the intercept is untouched)."""
        if not self.l1:
            return
        xp, w = self.xp, params[:-1]
        threshold = step * self.l1
        magnitude = self._abs[:-1]
        xp.abs(w, out=magnitude)
        xp.subtract(magnitude, threshold, out=magnitude)
        xp.maximum(magnitude, 0.0, out=magnitude)
        xp.copysign(magnitude, w, out=w)

    def l1_value(self, params) -> float:
        """``α‖w‖₁`` (0 without L1), reduced through ``objective.dot``."""
        if not self.l1:
            return 0.0
        self.xp.abs(params, out=self._abs)
        return self.l1 * self.objective.dot(self._abs, self._mask)

    def composite_grad_norm(self) -> float:
        """Norm of the minimum-norm subgradient of ``F`` at ``params`` (the gradient norm without L1)."""
        if not self.l1:
            return math.sqrt(max(self.objective.dot(self.grad, self.grad), 0.0))
        xp, w, g = self.xp, self.params[:-1], self.grad[:-1]
        r = self._abs
        # at w_i = 0: soft(g_i, α); elsewhere g_i + α sign(w_i)
        xp.abs(g, out=r[:-1])
        xp.subtract(r[:-1], self.l1, out=r[:-1])
        xp.maximum(r[:-1], 0.0, out=r[:-1])
        xp.copysign(r[:-1], g, out=r[:-1])
        r[:-1] = xp.where(w != 0, g + self.l1 * xp.sign(w), r[:-1])
        r[-1] = self.grad[-1]
        return math.sqrt(max(self.objective.dot(r, r), 0.0))


def loss_resolution(objective) -> float:
    """Relative size of rounding in the objective's loss: ``8·eps`` of the data dtype (float64 default).

    Sufficient-decrease tests allow this much, so that at rounding level they neither reject good steps
    nor shrink the step towards zero.
    """
    dtype = getattr(getattr(objective, "local", None), "dtype", np.float64)
    return 8 * float(np.finfo(dtype).eps)


def host_copy(xp, array):
    """A host NumPy copy of a backend array (for state dictionaries)."""
    return np.array(getattr(xp, "asnumpy", np.asarray)(array))


class Composite(ProximalMixin, Optimizer):
    """An optimizer whose reported ``loss`` is ``F = f + α‖w‖₁`` (``smooth`` holds ``f``)."""

    def __init__(self, objective, *, xp, lr: float, cfg=None):
        super().__init__(objective, xp=xp, lr=lr, cfg=cfg)
        self._setup_l1()
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
