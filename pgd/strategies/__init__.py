"""Parallel strategies: how ranks split the data and combine the objective.

Each strategy builds an *objective* for the optimizers of :mod:`pgd.optim`:

- ``value_and_grad(params, grad_out) -> float``: the global objective
  ``(1/n) Σ loss_i + (λ/2)‖w‖²`` at ``params = [w, b]``, its gradient written into ``grad_out``;
- ``dot(a, b) -> float``: the global inner product of two parameter-shaped vectors;
- ``lipschitz(power_iters, seed) -> float``: an estimate of the gradient's Lipschitz constant;
- optional, for ``--optimizer sgd``: ``row_range`` (this rank's global rows ``[start, stop)``) and
  ``value_and_grad_batch(params, grad_out, local_rows, batch_size) -> float`` (a mini-batch objective
  normalised by the global batch size);
- ``compute_seconds`` and ``comm`` (a :class:`pgd.comm.Communicator`) for the timing split.
"""

from pgd.strategies.data_parallel import DataParallelObjective, build_data_parallel

STRATEGIES = {"data": build_data_parallel}

__all__ = ["DataParallelObjective", "STRATEGIES", "build_data_parallel"]
