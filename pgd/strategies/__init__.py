"""Parallel strategies: how ranks split the data and combine the objective.

Each strategy builds an *objective* for the optimizers of :mod:`pgd.optim`:

- ``value_and_grad(params, grad_out) -> float``: the global objective
  ``(1/n) Σ loss_i + (λ/2)‖w‖²`` at ``params = [w, b]``, its gradient written into ``grad_out``;
- ``dot(a, b) -> float``: the global inner product of two parameter-shaped vectors;
- ``lipschitz(power_iters, seed) -> float``: an estimate of the gradient's Lipschitz constant;
- ``compute_seconds`` and ``comm`` (a :class:`pgd.comm.Communicator`) for the timing split;
- ``zeros()``: the initial (local) parameter vector; ``full_params(params)``: the whole ``[w, b]`` as a
  host float64 vector on every rank (grid modes hold one column block of ``w`` per rank);
- optional, for ``--optimizer sgd``: ``row_range`` (this rank's global rows ``[start, stop)``) and
  ``value_and_grad_batch(params, grad_out, local_rows, batch_size) -> float`` (a mini-batch objective
  normalised by the global batch size).
"""

from pgd.strategies.data_parallel import DataParallelObjective, build_data_parallel
from pgd.strategies.grid import GridObjective, build_grid

STRATEGIES = {"data": build_data_parallel, "feature": build_grid, "hybrid": build_grid}


def pick_runner(cfg):
    """The loop of a mode that does not use :func:`pgd.train.train`'s, or None.

    ``async`` (parameter server), ``shm`` (Hogwild on node-shared memory) and ``data`` with
    ``--sync-every k`` (local SGD) run ``runner(cfg, world, backend) -> summary`` instead.
    """
    from pgd.strategies.async_ps import run_async  # noqa: PLC0415 - loaded only when used
    from pgd.strategies.local_sgd import run_local_sgd  # noqa: PLC0415
    from pgd.strategies.shm import run_shm  # noqa: PLC0415

    if cfg.mode == "data" and getattr(cfg, "sync_every", 0):
        return run_local_sgd
    return {"async": run_async, "shm": run_shm}.get(cfg.mode)


__all__ = ["DataParallelObjective", "GridObjective", "STRATEGIES", "build_data_parallel", "build_grid",
           "pick_runner"]
