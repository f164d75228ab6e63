"""Solvers of the Gram objective (:mod:`pgd.strategies.gram`): the normal equations, and coordinate descent with L1.

Both run on the rank-replicated ``(d+1) × (d+1)`` system on the host (NumPy), the same bits on every rank,
so they need no communication.  Each ``step()`` leaves ``loss`` and ``grad`` evaluated at the new point, so
the training loop's optimality test decides convergence as for every other optimizer.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from pgd.device.backend import host_copy_of
from pgd.optim.base import Optimizer
from pgd.optim.prox import Composite

#: Cholesky's pivots may spread over at most this ratio (a lower bound on the condition number) before the
#: system counts as collinear and the minimum-norm solution is taken instead.
MAX_CONDITION = 1e12

#: Corrections solved for after the first solution, at most.
MAX_REFINEMENTS = 3

#: Eigenvalues below this fraction of the largest are dropped by the minimum-norm solution.
RCOND = 1e-12


def _active(objective) -> slice:
    """The coordinates that are solved for (the intercept slot only when it is fitted)."""
    return slice(0, objective.d + 1 if objective.fit_intercept else objective.d)


class NormalEquations(Optimizer):
    """``--solver gram`` without L1: ``(G + diag(λ)) p = c`` by Cholesky, refined against the residual.

    The first step solves from ``p = 0``; later steps solve for the correction ``−A⁻¹∇f`` (iterative
    refinement) until the objective stops decreasing, which normally takes one or two.  When Cholesky fails
    or its pivots show a condition number above :data:`MAX_CONDITION`, the columns are collinear: the
    minimum-norm solution from a symmetric eigendecomposition is taken and ``collinear`` says how many
    directions were dropped (the run prints it as a warning).
    """

    name = "cholesky"
    needs_lr = False
    fixed_step = False

    def __init__(self, objective, *, xp, lr: float = 1.0):
        super().__init__(objective, xp=xp, lr=lr)
        self.collinear = None
        self.refinements = 0
        self._solve = None
        self.method = "cholesky"

    def _factorize(self) -> None:
        matrix, _ = self.objective.system()
        active = _active(self.objective)
        system = matrix[active, active]
        try:
            factor = np.linalg.cholesky(system)
            pivots = np.abs(np.diag(factor))
            if pivots.min() ** 2 * MAX_CONDITION < pivots.max() ** 2:
                raise np.linalg.LinAlgError("ill-conditioned")
            self._solve = lambda rhs: np.linalg.solve(system, rhs)
            return
        except np.linalg.LinAlgError:
            pass
        values, vectors = np.linalg.eigh(system)
        keep = values > RCOND * max(values[-1], 0.0)
        dropped = int(np.count_nonzero(~keep))
        inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
        self._solve = lambda rhs: inverse @ rhs
        self.method = "minimum-norm (eigendecomposition)"
        self.collinear = (f"collinear columns: the normal equations are singular ({dropped} of {len(values)} "
                          f"directions dropped); the minimum-norm solution is reported")

    def step(self) -> float:
        if self._solve is None:
            self._factorize()
        to_host = partial(host_copy_of, self.xp)
        active = _active(self.objective)
        correction = np.zeros(self.objective.d + 1)
        correction[active] = -self._solve(np.asarray(to_host(self.grad), dtype=np.float64)[active])
        trial = self.params + self.xp.asarray(correction)
        trial_grad = self.xp.empty_like(self.grad)
        loss = self.evaluate(trial, trial_grad)
        if not loss <= self.loss:   # a refinement that does not help: the solution is as good as it gets
            self.stop_reason = "normal equations solved (refinement reached rounding level)"
            return self.loss
        self.params, self.grad, self.loss = trial, trial_grad, loss
        self.refinements += 1
        if self.refinements > MAX_REFINEMENTS:
            self.stop_reason = f"normal equations solved ({MAX_REFINEMENTS} refinements)"
        return self.loss

    def summary(self) -> dict:
        return {"gram_method": self.method}


class GramCoordinateDescent(Composite):
    """``--solver gram`` with ``--l1``: cyclic coordinate descent on the Gram matrix (glmnet's covariance
    updates).  One ``step()`` is one sweep over the coordinates:

        p_j ← soft(c_j − Σ_{k≠j} G_jk p_k, ακ_j) / (G_jj + λ_j)

    keeping ``q = Gp`` up to date in O(d) per changed coordinate.
    """

    name = "cd"
    needs_lr = False
    fixed_step = False
    supports_l1 = True

    def step(self) -> float:
        objective = self.objective
        to_host = partial(host_copy_of, self.xp)
        matrix, moment = objective.system()
        kappa = np.asarray(to_host(self._kappa), dtype=np.float64) * self.l1
        p = np.array(to_host(self.params), dtype=np.float64)
        q = matrix @ p
        for j in range(_active(objective).stop):
            pivot = matrix[j, j]
            if pivot <= 0.0:
                continue
            rho = moment[j] - q[j] + pivot * p[j]
            new = math.copysign(max(abs(rho) - kappa[j], 0.0), rho) / pivot
            if new != p[j]:
                q += matrix[:, j] * (new - p[j])
                p[j] = new
        self.params[...] = self.xp.asarray(p)
        self.smooth, self.loss = self.evaluate_composite(self.params, self.grad)
        return self.loss

    def summary(self) -> dict:
        return {"gram_method": "coordinate descent"}
