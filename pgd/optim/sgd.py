"""Mini-batch stochastic gradient descent over row-partitioned data (proximal with ``--l1``).

Global batches, identical for any rank count: epoch ``e`` visits the rows in the order
``numpy.random.default_rng([seed, e]).permutation(n)`` of *global* row indices; batch ``k`` is the slice
``[k·B, (k+1)·B)`` of that order (the last one may be shorter).  Every rank computes the same permutation
(one O(n) integer array per epoch, not per step) and keeps the batch members inside its own row range
``[start, stop)``, converted to local indices, so the batch is split across ranks in proportion to their
rows.  The summed batch gradient is reduced once and divided by the global batch size.

The full objective (loss and gradient over all rows) is only evaluated at the end of each epoch and after
the last step: those iterates are ``fresh`` and the training loop runs its stop tests (``--tol`` on the full
gradient, ``--rtol`` on the full loss between epochs) and records them; other steps only count.
"""

from __future__ import annotations

import math

import numpy as np

from pgd.errors import InputError
from pgd.optim.prox import Composite


class MiniBatchSGD(Composite):
    """``sgd``: ``x ← prox(x − η_t ∇f_B(x))`` on global mini-batches ``B`` of ``--batch-size`` rows.

    Step sizes ``η_t`` (``--schedule``; ``t`` counts steps from 0, ``T`` is the step budget, ``S`` the
    steps per epoch): constant ``lr``; inverse-time ``lr/(1 + t/S)``; cosine ``lr·½(1 + cos(πt/T))``.
    """

    name = "sgd"
    supports_l1 = True

    def __init__(self, objective, *, xp, lr: float, l1: float = 0.0, batch_size: int = 256, epochs: int = 0,
                 schedule: str = "constant", seed: int = 0):
        super().__init__(objective, xp=xp, lr=lr, l1=l1)
        if not hasattr(objective, "value_and_grad_batch"):
            raise InputError("--optimizer sgd needs mini-batch evaluations, which this --mode/--solver lacks",
                             collective=True)
        self.n = int(objective.n_global)
        self.batch_size = max(1, min(int(batch_size), self.n))
        self.epochs = int(epochs)
        self.schedule = str(schedule)
        self.seed = int(seed)
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.step_count = 0
        self.batch_evaluations = 0
        self._plan_epoch = None

    def budget(self, max_iter: int) -> int:
        """``--epochs`` × steps per epoch when ``--epochs`` is set, else ``max_iter`` steps."""
        self.total_steps = self.epochs * self.steps_per_epoch if self.epochs else max_iter
        return self.total_steps

    def start(self, params) -> float:
        loss = super().start(params)
        self._batch_grad = self.xp.empty_like(self.params)
        self.fresh = True
        return loss

    def _plan(self, epoch: int) -> None:
        """This rank's local row indices in epoch order, and where each global batch starts among them."""
        order = np.random.default_rng([self.seed & (2**63 - 1), epoch]).permutation(self.n)
        start, stop = self.objective.row_range
        positions = np.flatnonzero((order >= start) & (order < stop))
        self._local_rows = self.xp.asarray(order[positions] - start)
        self._bounds = np.searchsorted(positions // self.batch_size, np.arange(self.steps_per_epoch + 1))
        self._plan_epoch = epoch

    def learning_rate(self, step: int) -> float:
        """Step size of step ``step`` (0-based) under ``--schedule``."""
        if self.schedule == "inverse-time":
            return self.lr / (1.0 + step / self.steps_per_epoch)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(self.total_steps, 1), 1.0)))
        return self.lr

    def step(self) -> float:
        epoch, batch = divmod(self.step_count, self.steps_per_epoch)
        if self._plan_epoch != epoch:
            self._plan(epoch)
        rows = self._local_rows[self._bounds[batch]:self._bounds[batch + 1]]
        size = min(self.batch_size, self.n - batch * self.batch_size)
        self.objective.value_and_grad_batch(self.params, self._batch_grad, rows, size)
        self.batch_evaluations += 1
        rate = self.learning_rate(self.step_count)
        self._batch_grad *= rate
        self.params -= self._batch_grad
        self.prox(self.params, rate)
        self.step_count += 1
        self.fresh = self.step_count % self.steps_per_epoch == 0 or self.step_count == self.total_steps
        if self.fresh:
            self.smooth, self.loss = self.evaluate_composite(self.params, self.grad)
        return self.loss

    def summary(self) -> dict:
        return {"epochs": self.step_count / self.steps_per_epoch, "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch, "schedule": self.schedule,
                "batch_evaluations": self.batch_evaluations}

    def state_dict(self) -> dict:
        return self._save(super().state_dict(), step_count=self.step_count,
                          batch_evaluations=self.batch_evaluations)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.step_count = int(state["step_count"])
        self.batch_evaluations = int(state["batch_evaluations"])
