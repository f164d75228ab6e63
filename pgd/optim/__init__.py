"""Optimizers: state + step on the replicated parameter vector; they know nothing about MPI.

Conventions
-----------
- The parameter vector is ``params = [w_1..w_d, b]`` (length ``d + 1``, float64, on the backend's
  device); without an intercept ``b`` stays 0 because its gradient is 0.
- An optimizer talks to an *objective* (see :class:`pgd.strategies.Objective`): ``value_and_grad(params,
  grad_out) -> loss`` returns the **global** objective, and ``dot(a, b)`` is the global inner product of
  two parameter-shaped vectors.  Every rank receives the same bits, so every rank computes the same step.
- ``start(params)`` evaluates the objective at the initial point; each ``step()`` moves to the next iterate
  and leaves ``loss`` and ``grad`` evaluated there, so the caller's stopping test is always current.
- ``state_dict()`` holds everything needed to continue exactly (arrays as host NumPy copies);
  ``load_state_dict`` restores it.
"""

from pgd.optim.base import Optimizer
from pgd.optim.direct import GramCoordinateDescent, NormalEquations
from pgd.optim.methods import LBFGS, Adam, HeavyBall, Nesterov, ProximalGradient
from pgd.optim.sgd import MiniBatchSGD

#: The iterative methods, by their ``--optimizer`` name (the CLI's choices, in this order).
ITERATIVE = {cls.name: cls for cls in (ProximalGradient, HeavyBall, Nesterov, Adam, MiniBatchSGD, LBFGS)}
#: The solvers of the Gram objective, chosen by ``--solver`` rather than ``--optimizer``.
GRAM_SOLVERS = {cls.name: cls for cls in (NormalEquations, GramCoordinateDescent)}
#: Every optimizer by name.
OPTIMIZERS = {**ITERATIVE, **GRAM_SOLVERS}


def make_optimizer(name: str, objective, *, xp, lr: float, cfg=None) -> Optimizer:
    """Build the optimizer called ``name`` (see :data:`OPTIMIZERS`) with its keyword options taken from ``cfg``
    (a :class:`pgd.config.RunConfig`, or None for the method's defaults)."""
    return OPTIMIZERS[name].from_config(objective, xp=xp, lr=lr, cfg=cfg)


__all__ = ["GRAM_SOLVERS", "ITERATIVE", "OPTIMIZERS", "Optimizer", "make_optimizer"]
