"""``--mode shm``: Hogwild-style SGD on a weight vector shared by the ranks of a node.

The ranks of a node (``Split_type(COMM_TYPE_SHARED)``) map one MPI-3 shared-memory window
(``Win.Allocate_shared``, owned by the node's first rank) holding ``[w, b]`` and an update counter. Each
rank reads the weights without a lock, computes a mini-batch gradient on its own rows and subtracts
``lr · g`` in place, also without a lock; only the counter is updated atomically (``Fetch_and_op``), which
measures the staleness: updates by other ranks between a rank's read and its write.

With several nodes, the node copies are averaged over the nodes' first ranks every ``--sync-every`` steps
(every step when it is 0). The loss is evaluated on the (then quiet) shared weights about four times per
pass over the rows. ``PGD_SHM_NODE_RANKS=m`` splits the ranks into simulated nodes of ``m`` ranks, to
exercise the multi-node path on one machine (tests).

Signals, ``--max-time`` and checkpoints are decided at agreed steps (:class:`pgd.training.preempt.DecisionSchedule`,
about twice a second) by :class:`pgd.training.preempt.Resilience`. A checkpoint holds each node's weights, the step
and every rank's shuffle. Lock-free updates race, so a resumed run continues from the checkpoint but is
not bit-identical to an uninterrupted one, except with one rank per node (``PGD_SHM_NODE_RANKS=1``), where
nothing races.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from pgd.runtime.topology import node_communicator
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
from pgd.training.preempt import DecisionSchedule


class SharedWeights:
    """``[w, b]`` and an update counter in one node-shared window (passive-target epoch held open)."""

    def __init__(self, node, length: int):
        self.length = length
        owned = 8 * (length + 1) if node.Get_rank() == 0 else 0
        self.window = MPI.Win.Allocate_shared(owned, 8, comm=node)
        memory, _ = self.window.Shared_query(0)
        self.params = np.ndarray((length,), dtype=np.float64, buffer=memory)
        self.counter = np.ndarray((1,), dtype=np.int64, buffer=memory, offset=8 * length)
        if node.Get_rank() == 0:
            self.params[:] = 0.0
            self.counter[:] = 0
        self.window.Lock_all()
        self.window.Sync()
        node.Barrier()
        self._one = np.ones(1, dtype=np.int64)
        self._seen = np.zeros(1, dtype=np.int64)

    def updates(self, add: bool = False) -> int:
        """The node's update count (atomically incremented first when ``add``)."""
        self.window.Fetch_and_op(self._one, self._seen, 0, self.length, MPI.SUM if add else MPI.NO_OP)
        self.window.Flush(0)
        return int(self._seen[0])

    def free(self) -> None:
        """End the access epoch and free the window (collective over the node)."""
        self.window.Unlock_all()
        self.window.Free()


def run_shm(cfg, world, backend) -> dict:
    """Train Hogwild-style on node-shared weights; returns the summary (every rank)."""
    rank, size = world.Get_rank(), world.Get_size()
    node = node_communicator(world)
    leaders = world.Split(0 if node.Get_rank() == 0 else MPI.UNDEFINED, rank)
    nodes = world.bcast(leaders.Get_size() if rank == 0 else None, root=0)
    writers = world.allreduce(node.Get_size(), op=MPI.MAX)
    rows, objective, facts = prepare_run(cfg, world, backend, writers=writers,
                                         plan=f"mode shm, {size} rank(s) on {nodes} node(s)")
    if cfg.dry_run:
        node.Free()
        if leaders != MPI.COMM_NULL:
            leaders.Free()
        return facts
    lr = facts["lr"]
    shared = SharedWeights(node, rows.meta.d + 1)
    stepper = MiniBatchStepper(objective, cfg, rank, backend)
    steps = math.ceil(update_budget(cfg, rows.n_global) / size)
    sync_every = max(int(cfg.sync_every), 1)
    evaluate_every = max(1, eval_interval(rows.n_global // size, stepper.batch) // sync_every) * sync_every
    monitor = LossMonitor(cfg.target_loss)
    snapshot = np.zeros(rows.meta.d + 1)
    scaled = np.zeros_like(snapshot)
    state = MiniBatchState(shared.params, stepper)

    def settle(average: bool = True) -> None:
        """Quiet weights: wait for the node's writes; with ``average``, make the node copies equal."""
        shared.window.Sync()
        node.Barrier()
        if nodes > 1 and average:
            if leaders != MPI.COMM_NULL:
                leaders.Allreduce(MPI.IN_PLACE, shared.params, op=MPI.SUM)
                shared.params /= nodes
            shared.window.Sync()
            node.Barrier()

    stop_reason = f"update budget reached (--updates {cfg.updates})"
    staleness_max, staleness_sum, wait = 0, 0.0, 0.0
    world.Barrier()
    monitor.started = started = MPI.Wtime()
    # a checkpoint holds each node's copy as it is (each rank saves its node's): resuming changes nothing
    resilience = start_resilience(cfg, world, state, rows, monitor, quiesce=lambda: settle(average=False))
    settle(average=False)  # a resumed node copy is seen by every rank of the node before anyone steps
    schedule = DecisionSchedule(state.step, resilience.agreement.elapsed)
    try:
        while state.step < steps:
            shared.window.Sync()
            seen = shared.updates()
            snapshot[:] = shared.params
            np.multiply(stepper.gradient(snapshot), lr, out=scaled)
            np.subtract(shared.params, scaled, out=shared.params)
            staleness = shared.updates(add=True) - seen
            staleness_max, staleness_sum = max(staleness_max, staleness), staleness_sum + staleness
            state.step += 1
            resilience.faults.pause()
            step = state.step
            if step == schedule.next and step < steps:
                reason = resilience.decide(step * size)
                schedule.advance(step, resilience.agreement.elapsed)
                if reason:
                    stop_reason = reason
                    break
            if (nodes == 1 or step % sync_every) and step % evaluate_every and step < steps:
                continue
            waited = MPI.Wtime()
            settle(average=step % sync_every == 0 or step == steps)
            wait += MPI.Wtime() - waited
            if step % evaluate_every == 0 or step == steps:
                snapshot[:] = shared.params
                loss = exact_loss(objective, snapshot)[0]
                if monitor.record(loss, step * size):
                    stop_reason = f"target loss reached (loss {loss:.6g} <= {cfg.target_loss:g})"
                    break
    finally:
        resilience.close()
    wall = MPI.Wtime() - started
    settle()
    snapshot[:] = shared.params
    shared.free()
    node.Free()
    if leaders != MPI.COMM_NULL:
        leaders.Free()
    stats = {"wall": wall, "compute": stepper.compute_seconds, "wait": wait, "updates": state.step * size,
             "stop_reason": stop_reason, "communicator": f"shared memory ({nodes} node(s))",
             "staleness_max": staleness_max, "staleness_sum": staleness_sum, "staleness_count": state.step,
             "bytes_per_update": 0}
    return finish_run(cfg, world, objective, snapshot, facts, monitor if rank == 0 else None, stats)
