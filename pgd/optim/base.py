"""The optimizer base class (state, start, step, state_dict) and the plain gradient-descent baseline."""


from __future__ import annotations

import inspect
import math
from functools import partial

import numpy as np

from pgd.device.backend import host_copy_of


class Optimizer:
    """Base class: holds ``params``, ``loss``, ``grad`` and the evaluation counter.

    ``fresh`` is False after a step that did not evaluate the full objective at ``params`` (SGD between
    full evaluations): the loop then skips its stop tests and records nothing.  ``stop_reason`` set by a
    step ends the loop (e.g. a line search that can find no decrease at rounding level).
    """

    name = "base"
    needs_lr = True  # --lr auto is 1/L (power iterations); False: it is ``auto_lr``, no Lipschitz estimate
    auto_lr = 1.0  # what --lr auto stands for when ``needs_lr`` is False
    fixed_step = True  # steps of a fixed size, which diverge when it is too large (see pgd.training.sync)
    fresh = True
    stop_reason = None

    def __init__(self, objective, *, xp, lr: float):
        self.objective = objective
        self.xp = xp
        self.lr = float(lr)
        self.params = None
        self.grad = None
        self.loss = math.nan
        self.evaluations = 0

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The method's keyword options (``pgd train`` options of the same names), from its signature."""
        parameters = inspect.signature(cls.__init__).parameters
        return tuple(name for name, parameter in parameters.items()
                     if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("xp", "lr"))

    @classmethod
    def from_config(cls, objective, *, xp, lr: float, cfg=None) -> "Optimizer":
        """Build the method with its options taken from a :class:`pgd.config.RunConfig` (an option that ``cfg``
        lacks or leaves None keeps the method's default)."""
        options = {name: getattr(cfg, name, None) for name in cls.option_names()}
        return cls(objective, xp=xp, lr=lr, **{name: value for name, value in options.items() if value is not None})

    def evaluate(self, params, grad_out) -> float:
        """Global loss at ``params``, writing the global gradient into ``grad_out``."""
        self.evaluations += 1
        return self.objective.value_and_grad(params, grad_out)

    def start(self, params) -> float:
        """Take ``params`` (copied) as the initial point and evaluate there."""
        self.params = self.xp.array(params, dtype=self.xp.float64, copy=True)
        self.grad = self.xp.zeros_like(self.params)
        self.loss = self.evaluate(self.params, self.grad)
        return self.loss

    def grad_norm(self) -> float:
        """Global Euclidean norm of the current gradient."""
        return math.sqrt(max(self.objective.dot(self.grad, self.grad), 0.0))

    def optimality(self) -> float:
        """``‖∇f‖∞`` at the current point: the measure of the convergence test (see :mod:`pgd.training.sync`)."""
        return self.objective.norm_inf(self.grad)

    def step(self) -> float:
        """Move to the next iterate; returns the loss there."""
        raise NotImplementedError

    def budget(self, max_iter: int) -> int:
        """Number of steps the loop may take (SGD translates ``--epochs``)."""
        return max_iter

    def summary(self) -> dict:
        """Facts for the run summary (e.g. epochs, line-search statistics)."""
        return {}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (host copies)."""
        to_host = partial(host_copy_of, self.xp)
        return {"name": self.name, "lr": self.lr, "evaluations": self.evaluations,
                "params": np.array(to_host(self.params)), "loss": self.loss}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state written by :meth:`state_dict` and re-evaluate the gradient."""
        self.lr = float(state["lr"])
        self.start(self.xp.asarray(state["params"]))
        self.evaluations = int(state["evaluations"])


class PlainGradientDescent(Optimizer):
    """Full-batch gradient descent with a fixed step, ``params -= lr * grad``: the baseline that
    ``pgd bench gradient`` and ``pgd bench modes`` time (not registered; ``--optimizer gd`` is
    :class:`pgd.optim.methods.ProximalGradient`)."""

    name = "plain-gd"

    def start(self, params) -> float:
        loss = super().start(params)
        self._scaled = self.xp.empty_like(self.params)
        return loss

    def step(self) -> float:
        self.xp.multiply(self.grad, self.lr, out=self._scaled)
        self.params -= self._scaled
        self.loss = self.evaluate(self.params, self.grad)
        return self.loss
