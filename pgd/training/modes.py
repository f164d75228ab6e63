"""Which loop runs a ``--mode``: the synchronous loop of :mod:`pgd.training.sync`, or a runner of its own."""

from __future__ import annotations

from pgd.training.async_ps import run_async
from pgd.training.local_sgd import run_local_sgd
from pgd.training.shm import run_shm

#: Modes with a loop of their own: ``runner(cfg, world, backend) -> summary``.
RUNNERS = {"async": run_async, "shm": run_shm}


def pick_runner(cfg):
    """The loop of a mode that does not use :func:`pgd.training.sync.train`'s, or None.

    ``async`` (parameter server), ``shm`` (Hogwild on node-shared memory) and ``data`` with
    ``--sync-every k`` (local SGD) run ``runner(cfg, world, backend) -> summary`` instead.
    """
    if cfg.mode == "data" and cfg.sync_every:
        return run_local_sgd
    return RUNNERS.get(cfg.mode)
