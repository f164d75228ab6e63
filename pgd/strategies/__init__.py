"""Parallel strategies: how ranks split the data and combine the objective.

Each strategy builds an *objective* for the optimizers of :mod:`pgd.optim`:

- ``value_and_grad(params, grad_out) -> float``: the global objective
  ``(1/n) Σ loss_i + (λ/2)‖w‖²`` at ``params = [w, b]``, its gradient written into ``grad_out``;
- ``dot(a, b) -> float``: the global inner product of two parameter-shaped vectors;
- ``lipschitz(power_iters, seed) -> float``: an estimate of the gradient's Lipschitz constant;
- ``compute_seconds`` and ``comm`` (a :class:`pgd.comm.host.Communicator`) for the timing split;
- ``zeros()``: the initial (local) parameter vector; ``full_params(params)``: the whole ``[w, b]`` as a
  host float64 vector on every rank (grid modes hold one column block of ``w`` per rank);
- optional, for ``--optimizer sgd``: ``row_range`` (this rank's global rows ``[start, stop)``) and
  ``value_and_grad_batch(params, grad_out, local_rows, batch_size) -> float`` (a mini-batch objective
  normalised by the global batch size).
"""

from pgd.strategies.data_parallel import DataParallelObjective, build_data_parallel
from pgd.strategies.grid import GridObjective, build_grid

STRATEGIES = {"data": build_data_parallel, "feature": build_grid, "hybrid": build_grid}


__all__ = ["DataParallelObjective", "GridObjective", "STRATEGIES", "build_data_parallel", "build_grid"]
