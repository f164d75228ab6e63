"""``--mode data --sync-every k``: local SGD. Ranks take mini-batch SGD steps on their own rows with their
own copy of the weights, and average the copies (one Allreduce) every ``k`` steps, so they communicate
``k`` times less than synchronous SGD. The loss is evaluated on the averaged weights about four times per
pass over the rows; every rank holds the same weights after each average.

Each average is also a decision point of :class:`pgd.training.preempt.Resilience` (signals, ``--max-time``,
checkpoints): its :class:`pgd.training.preempt.Agreement` rides along in the averaging Allreduce (four more
doubles, no extra collective). A checkpoint holds the averaged weights, the step and every rank's shuffle,
so a run resumed with the same ranks gives bit for bit the weights of an uninterrupted run.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from pgd.comm.host import make_communicator
from pgd.training.minibatch import (
    LossMonitor,
    MiniBatchState,
    MiniBatchStepper,
    eval_interval,
    exact_loss,
    finish_run,
    prepare_run,
    start_resilience,
    update_budget,
)
from pgd.training.preempt import AGREEMENT_SLOTS


def run_local_sgd(cfg, world, backend) -> dict:
    """Train by local SGD with averaging every ``--sync-every`` steps; returns the summary (every rank)."""
    rank, size, every = world.Get_rank(), world.Get_size(), int(cfg.sync_every)
    rows, objective, facts = prepare_run(cfg, world, backend,
                                         plan=f"local SGD on {size} rank(s), average every {every} steps")
    if cfg.dry_run:
        return facts
    lr = facts["lr"]
    stepper = MiniBatchStepper(objective, cfg, rank, backend)
    comm = make_communicator(cfg.comm, world)
    steps = math.ceil(update_budget(cfg, rows.n_global) / size)
    evaluate_every = max(1, eval_interval(rows.n_global // size, stepper.batch) // every) * every
    monitor = LossMonitor(cfg.target_loss)
    buffer = np.zeros(rows.meta.d + 1 + AGREEMENT_SLOTS)  # [w, b, agreement]: one Allreduce per average
    params, agreed = buffer[: rows.meta.d + 1], buffer[rows.meta.d + 1:]
    scaled = np.zeros_like(params)
    state = MiniBatchState(params, stepper)
    stop_reason = f"update budget reached (--updates {cfg.updates})"
    world.Barrier()
    monitor.started = started = MPI.Wtime()
    resilience = start_resilience(cfg, world, state, rows, monitor)
    try:
        while state.step < steps:
            params -= np.multiply(stepper.gradient(params), lr, out=scaled)
            state.step += 1
            resilience.faults.pause()
            if state.step % every and state.step < steps:
                continue
            resilience.agreement.contribute(agreed)
            comm.allreduce(buffer)
            params /= size
            if state.step % evaluate_every == 0 or state.step == steps:
                loss = exact_loss(objective, params)[0]
                if monitor.record(loss, state.step * size):
                    stop_reason = f"target loss reached (loss {loss:.6g} <= {cfg.target_loss:g})"
                    break
            if state.step < steps and (reason := resilience.decide(state.step * size, summed=agreed)):
                stop_reason = reason
                break
    finally:
        resilience.close()
    wall = MPI.Wtime() - started
    stats = {"wall": wall, "compute": stepper.compute_seconds, "wait": comm.seconds,
             "updates": state.step * size, "stop_reason": stop_reason,
             "communicator": f"local SGD ({cfg.comm} every {every} steps)",
             "bytes_per_update": params.nbytes // every}
    return finish_run(cfg, world, objective, params, facts, monitor if rank == 0 else None, stats)
