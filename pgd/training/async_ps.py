"""``--mode async``: parameter servers holding weight shards, workers pushing mini-batch gradients.

Ranks ``0..k-1`` are servers (``--servers k``); server ``s`` owns the block ``block_range(d + 1, k, s)``
of ``[w, b]``. The other ranks are workers and hold the rows (block partition over the workers).

Protocol (buffer-based point-to-point, preallocated buffers, one tag each way so messages from one rank
stay in order):

- worker -> every server, tag :data:`TAG_PUSH`: ``[kind, clock, version_used, loss_share, signal, gradient
  shard]`` with ``kind`` :data:`PULL` (first request), :data:`PUSH` (a gradient; also asks for fresh
  weights) or :data:`DONE` (the worker stops; nothing follows), and ``signal`` a stop signal the worker saw
  itself or heard of from a server (0: none). Sent with ``Isend``.
- server -> worker, tag :data:`TAG_REPLY`: ``[version, stop, signal, weight shard]``.

A server applies a gradient as it arrives (``shard -= lr * g``; ``version`` counts the updates applied)
and records the staleness ``version - version_used``. It answers a worker whose clock (pushes so far) is
``c`` only when ``c - min(clocks of running workers) <= s`` (``--staleness s``; never held back with
``none``), so ``s = 0`` is bulk-synchronous. Server 0 decides when to stop (update budget, or the
monitored loss, the sum of the workers' latest ``loss_share`` reports, at or below ``--target-loss``) and
says so in every later reply; a worker told to stop sends :data:`DONE` to every server and leaves. A
server leaves when every worker is done: all its receives have completed, and it waits for its sends.

Signals, ``--max-time`` and checkpoints: the run is a sequence of such segments. Server 0 also ends a
segment early, on its own clock (rank 0's, the run's agreed clock) and signals forwarded in the messages,
when a stop signal arrived anywhere, when the time budget is nearly used, or when a checkpoint is due; at
the end of a segment every shard has applied the same updates, the ranks agree
(:class:`pgd.training.preempt.Resilience`) and write a checkpoint of every rank's state (shards, versions, clocks,
shuffles), then stop or start the next segment. Asynchronous results depend on timing, so a resumed run is
not bit-identical to an uninterrupted one: it continues from the checkpoint's weights, update count and
shuffles, and the update budget counts the updates of the runs before.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from pgd.data import block_range
from pgd.errors import PgdError
from pgd.training.minibatch import (
    LossMonitor,
    MiniBatchStepper,
    eval_interval,
    finish_run,
    prepare_run,
    start_resilience,
    update_budget,
)

TAG_PUSH, TAG_REPLY = 81, 82
PULL, PUSH, DONE = 0.0, 1.0, 2.0
HEADER = 5  # kind, clock, version_used, loss_share (NaN when not reported), signal
REPLY_HEADER = 3  # version, stop, signal


class _Shards:
    """Where each server's block of ``[w, b]`` lies."""

    def __init__(self, length: int, servers: int):
        self.ranges = [block_range(length, servers, server) for server in range(servers)]

    def count(self, server: int) -> int:
        start, stop = self.ranges[server]
        return stop - start


class Server:
    """One server rank: its shard, the workers' clocks, deferred replies and statistics.

    ``resilience`` (set by :func:`run_async`) supplies the stop-signal flag and, on server 0, the clock
    and checkpoint schedule that end a segment early.
    """

    def __init__(self, world, rank: int, servers: int, shards: _Shards, lr: float, bound, budget: int,
                 monitor: LossMonitor | None):
        self.world, self.lr, self.bound, self.budget, self.monitor = world, lr, bound, budget, monitor
        self.resilience = None
        self.workers = list(range(servers, world.Get_size()))
        count = shards.count(rank)
        self.shard = np.zeros(count)
        self.scaled = np.zeros(count)
        self.version = 0
        self.stop = False
        self.pause = None  # why server 0 ended a segment early: "signal", "time" or "checkpoint"
        self.stop_reason = f"update budget reached (--updates {budget})"
        workers = len(self.workers)
        self.clocks = np.zeros(workers, dtype=np.int64)
        self.done = np.zeros(workers, dtype=bool)
        self.waiting = np.zeros(workers, dtype=bool)
        self.shares = np.full(workers, np.nan)
        self.inbox = [np.empty(HEADER + count) for _ in self.workers]
        self.outbox = [np.empty(REPLY_HEADER + count) for _ in self.workers]
        self.receives = [MPI.REQUEST_NULL] * workers
        self.sends = [MPI.REQUEST_NULL] * workers
        self.last_heard = np.zeros(workers)
        self.slowest_gap = 0.0  # longest time between two messages of one worker (server 0's stop margin)
        self.staleness_max = 0
        self.staleness_sum = 0.0
        self.clock_gap_max = 0
        self.idle = 0.0

    def state_dict(self) -> dict:
        """The shard, the updates applied and the workers' clocks (for checkpoints)."""
        return {"shard": self.shard.copy(), "version": self.version, "clocks": self.clocks.copy(),
                "shares": self.shares.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.shard[:] = state["shard"]
        self.version = int(state["version"])
        self.clocks[:] = state["clocks"]
        self.shares[:] = state["shares"]

    def _min_clock(self) -> int:
        running = self.clocks[~self.done]
        return int(running.min()) if running.size else 0

    def _serve(self) -> None:
        """Reply to every waiting worker that the staleness bound lets through."""
        slowest = self._min_clock()
        for i in np.flatnonzero(self.waiting):
            gap = int(self.clocks[i]) - slowest
            if not self.stop:  # a reply that says stop starts no more work: no bound to keep
                if self.bound != "none" and gap > self.bound:
                    continue
                self.clock_gap_max = max(self.clock_gap_max, gap)
            self.waiting[i] = False
            self.sends[i].Wait()
            reply = self.outbox[i]
            reply[0], reply[1], reply[2] = self.version, float(self.stop), self.resilience.flag.signum
            reply[REPLY_HEADER:] = self.shard
            self.sends[i] = self.world.Isend(reply, dest=self.workers[i], tag=TAG_REPLY)

    def _monitor(self, i: int, share: float) -> None:
        """Server 0: keep worker ``i``'s latest loss share; test the budget and the target."""
        if self.monitor is None or self.stop:
            return
        if share == share:
            self.shares[i] = share
            if not np.isnan(self.shares).any():
                loss = float(self.shares.sum())
                if self.monitor.record(loss, self.version):
                    self.stop = True
                    self.stop_reason = f"target loss reached (monitored loss {loss:.6g} <= " \
                                       f"{self.monitor.target:g})"
        if self.version >= self.budget:
            self.stop = True

    def _check_pause(self, i: int, signal_heard: float) -> None:
        """Server 0: end the segment early for a signal, the time budget or a due checkpoint."""
        now = MPI.Wtime()
        self.slowest_gap = max(self.slowest_gap, now - self.last_heard[i])
        self.last_heard[i] = now
        if self.monitor is None or self.stop:
            return
        resilience = self.resilience
        agreed = resilience.agreement
        elapsed = agreed.clock_here()  # rank 0's clock: the run's agreed clock
        margin = 2 * self.slowest_gap + 2 * agreed.checkpoint_seconds
        if signal_heard or resilience.flag.signum:
            self.pause = "signal"
        elif resilience.cfg.max_time and elapsed + margin >= resilience.cfg.max_time:
            self.pause = "time"
        elif resilience.checkpoint_due(self.version, elapsed):
            self.pause = "checkpoint"
        self.stop = self.pause is not None

    def run(self) -> None:
        """Serve one segment: until every worker is done."""
        self.done[:], self.waiting[:], self.stop, self.pause = False, False, False, None
        self.last_heard[:] = MPI.Wtime()
        self.receives = [self.world.Irecv(self.inbox[i], source=source, tag=TAG_PUSH)
                         for i, source in enumerate(self.workers)]
        while not self.done.all():
            started = MPI.Wtime()
            i = MPI.Request.Waitany(self.receives)
            self.idle += MPI.Wtime() - started
            message = self.inbox[i]
            kind = message[0]
            if kind == DONE:
                self.done[i] = True
                self._serve()
                continue
            if kind == PUSH:
                staleness = self.version - int(message[2])
                self.staleness_max = max(self.staleness_max, staleness)
                self.staleness_sum += staleness
                self.shard -= np.multiply(message[HEADER:], self.lr, out=self.scaled)
                self.version += 1
                self.clocks[i] += 1
            self._monitor(i, float(message[3]))
            self._check_pause(i, float(message[4]))
            self.waiting[i] = True
            self.receives[i] = self.world.Irecv(message, source=self.workers[i], tag=TAG_PUSH)
            self._serve()
        MPI.Request.Waitall(self.sends)


class Worker:
    """One worker rank: pulls the shards, pushes mini-batch gradients until server 0 says stop."""

    def __init__(self, world, servers: int, shards: _Shards, stepper: MiniBatchStepper, n_global: int,
                 every: int):
        self.world, self.servers, self.shards = world, servers, shards
        self.stepper, self.n_global, self.every = stepper, n_global, every
        self.resilience = None
        self.params = np.zeros(shards.ranges[-1][1])
        self.outbox = [np.zeros(HEADER + shards.count(s)) for s in range(servers)]
        self.inbox = [np.zeros(REPLY_HEADER + shards.count(s)) for s in range(servers)]
        self.sends = [MPI.REQUEST_NULL] * servers
        self.receives = [MPI.REQUEST_NULL] * servers
        self.clock = 0
        self.wait = 0.0

    def state_dict(self) -> dict:
        """The shuffle and the pushes so far (for checkpoints)."""
        return {"stepper": self.stepper.state_dict(), "clock": self.clock}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.stepper.load_state_dict(state["stepper"])
        self.clock = int(state["clock"])

    def _send(self, kind: float, share: float = float("nan"), gradient=None) -> None:
        MPI.Request.Waitall(self.sends)
        heard = max([self.resilience.flag.signum] + [float(inbox[2]) for inbox in self.inbox])
        for server, (start, stop) in enumerate(self.shards.ranges):
            message = self.outbox[server]
            message[:HEADER] = kind, self.clock, self.inbox[server][0], share, heard
            if gradient is not None:
                message[HEADER:] = gradient[start:stop]
            if kind != DONE:
                self.receives[server] = self.world.Irecv(self.inbox[server], source=server, tag=TAG_REPLY)
            self.sends[server] = self.world.Isend(message, dest=server, tag=TAG_PUSH)

    def run(self) -> None:
        """One segment: pull, compute, push, until told to stop; then say DONE to every server."""
        self._send(PULL)
        while True:
            started = MPI.Wtime()
            MPI.Request.Waitall(self.receives)
            self.wait += MPI.Wtime() - started
            for server, (start, stop) in enumerate(self.shards.ranges):
                self.params[start:stop] = self.inbox[server][REPLY_HEADER:]
            if self.inbox[0][1]:
                break
            share = float("nan")
            if self.clock % self.every == 0:
                share = self.stepper.objective_share(self.params, self.n_global)
            gradient = self.stepper.gradient(self.params)
            self._send(PUSH, share, gradient)
            self.clock += 1
            self.resilience.faults.pause()
        self._send(DONE)
        MPI.Request.Waitall(self.sends)


def run_async(cfg, world, backend) -> dict:
    """Train with parameter servers and asynchronous workers; returns the summary (every rank)."""
    rank, size, servers = world.Get_rank(), world.Get_size(), int(cfg.servers)
    if size <= servers:
        raise PgdError(f"--mode async needs more ranks than --servers {servers} (got {size} rank(s)): "
                       f"run with at least {servers + 1}", collective=True)
    is_server = rank < servers
    rows, objective, facts = prepare_run(cfg, world, backend, holds_data=not is_server, writers=size - servers,
                                         plan=f"mode async, {servers} server(s), {size - servers} worker(s)")
    if cfg.dry_run:
        return facts
    lr = facts["lr"]
    shards = _Shards(rows.meta.d + 1, servers)
    budget = update_budget(cfg, rows.n_global)
    monitor = LossMonitor(cfg.target_loss) if rank == 0 else None
    stepper = None
    if is_server:
        role = Server(world, rank, servers, shards, lr, cfg.staleness, budget, monitor)
    else:
        stepper = MiniBatchStepper(objective, cfg, rank, backend)
        role = Worker(world, servers, shards, stepper, rows.n_global,
                      eval_interval(stepper.n_local, stepper.batch))
    world.Barrier()
    if monitor is not None:
        monitor.started = MPI.Wtime()
    started = MPI.Wtime()
    role.resilience = resilience = start_resilience(cfg, world, role, rows, monitor)
    stop_reason = None
    try:
        while stop_reason is None:
            role.run()
            final, time_used, updates = world.bcast(
                (role.pause is None, role.pause == "time", role.version) if rank == 0 else None, root=0)
            if final:
                stop_reason = world.bcast(role.stop_reason if rank == 0 else None, root=0)
            else:
                stop_reason = resilience.decide(updates, time_used=time_used)
    finally:
        resilience.close()
    wall = MPI.Wtime() - started
    params = np.zeros(rows.meta.d + 1)
    counts = [shards.count(s) if s < servers else 0 for s in range(size)]
    displacements = [shards.ranges[s][0] if s < servers else 0 for s in range(size)]
    mine = role.shard if is_server else np.empty(0)
    world.Allgatherv(mine, [params, counts, displacements, MPI.DOUBLE])
    stats = {"wall": wall, "compute": stepper.compute_seconds if stepper else 0.0,
             "wait": role.wait if stepper else 0.0, "updates": role.version if is_server else 0,
             "stop_reason": stop_reason, "communicator": f"parameter server ({servers} server(s))",
             "bytes_per_update": 8 * (2 * (rows.meta.d + 1) + (HEADER + REPLY_HEADER) * servers),
             "staleness_max": role.staleness_max if is_server else 0,
             "staleness_sum": role.staleness_sum if is_server and rank == 0 else 0.0,
             "staleness_count": role.version if is_server and rank == 0 else 0,
             "clock_gap_max": role.clock_gap_max if is_server else 0}
    return finish_run(cfg, world, objective, params, facts, monitor, stats)
