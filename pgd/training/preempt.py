"""Never lose work: agreed stop decisions, periodic checkpoints, signals and a wall-clock budget, for every mode.

SIGTERM and SIGUSR1 only set a flag.  At every decision point (after each step of the synchronous loop, at each
weight average of local SGD, at agreed steps of ``--mode shm``, at the end of each segment of ``--mode async``)
the ranks sum an :class:`Agreement` over all ranks: how many ranks saw each signal, rank 0's clock, and how
long rank 0's last checkpoint took. Every decision (write a checkpoint every ``--checkpoint-every``
iterations or updates, every ``--checkpoint-seconds`` seconds, or when stopping; stop on a signal; stop
before ``--max-time`` runs out) is computed from those summed numbers only, so every rank takes it at the
same point: no rank's own clock decides.  Being a SUM, the agreement can ride along in an Allreduce that a
mode makes anyway (local SGD appends it to its weight average).

With ``--checkpoint``, a stop writes a checkpoint and exits with :data:`pgd.errors.EXIT_PREEMPTED` (75) on
every rank and no model file: ``--resume`` continues from it.  Without ``--checkpoint``, the time budget
ends the run like an iteration budget (the model of the last iterate is written, marked as stopped by the
time budget, not converged; exit 0), and a signal exits 75 with nothing saved.
"""

from __future__ import annotations

import signal
import time

import numpy as np
from mpi4py import MPI

import pgd.runtime.launcher
from pgd.errors import EXIT_PREEMPTED, PgdError
from pgd.outputs.checkpoint import checkpoint_payload, data_fingerprint, resume, save_checkpoint
from pgd.runtime.faults import Faults

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: Slots of an :class:`Agreement` (to append to a SUM Allreduce buffer).
AGREEMENT_SLOTS = 4
#: Seconds between two decisions of a loop that has no collective of its own per step (``--mode shm``).
DECISION_SECONDS = 0.5


class Preempted(PgdError):
    """The run stopped early on a signal or the time budget; resumable from its checkpoint."""

    exit_code = EXIT_PREEMPTED
    prefix = "stopped"


class SignalFlag:
    """Turns SIGTERM and SIGUSR1 into a flag (the number of the last signal, 0 when none)."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signum = signum

    def install(self) -> None:
        """Catch the stop signals (main thread only; elsewhere signals keep their default action)."""
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            pass

    def restore(self) -> None:
        """Give the signals back their previous handlers."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


_EARLY_FLAG: SignalFlag | None = None


def catch_signals_early() -> None:
    """Start turning stop signals into the flag before the data loads, so one sent during start-up is kept
    (the loop acts on it at its first agreement) instead of killing the rank the default way."""
    global _EARLY_FLAG
    if _EARLY_FLAG is None:
        _EARLY_FLAG = SignalFlag()
        _EARLY_FLAG.install()


def release_early_signals() -> None:
    """Give the signals back if :func:`catch_signals_early` caught them and no loop adopted the flag (the run
    ended before its loop: an error, ``--dry-run``)."""
    global _EARLY_FLAG
    if _EARLY_FLAG is not None:
        _EARLY_FLAG.restore()
        _EARLY_FLAG = None


def adopt_signal_flag() -> SignalFlag:
    """The flag installed by :func:`catch_signals_early` (with any signal it caught), else a new one."""
    global _EARLY_FLAG
    flag, _EARLY_FLAG = _EARLY_FLAG, None
    if flag is None:
        flag = SignalFlag()
        flag.install()
    return flag


class Agreement:
    """The numbers every stop and checkpoint decision is taken from, combined by one SUM over the ranks.

    Slots: ranks that saw SIGTERM, ranks that saw SIGUSR1, rank 0's elapsed seconds since ``pgd`` started,
    and the seconds rank 0's last checkpoint took. Other ranks put zeros in the two clock slots, so every rank
    reads rank 0's numbers bit for bit (``x + 0 = x``) in any reduction order.

    Attributes (agreed, the same on every rank after :meth:`accept`)
    ----------------------------------------------------------------
    signum : int
        A stop signal seen by some rank (SIGTERM first), 0 when none.
    elapsed : float
        Rank 0's elapsed time at the last agreement.
    slowest : float
        Longest interval between two agreements so far (a step, or a segment of steps).
    checkpoint_seconds : float
        Duration of the last checkpoint.
    """

    def __init__(self, world, flag: "SignalFlag", faults: Faults):
        self.world, self.flag, self.faults = world, flag, faults
        self.is_root = world.Get_rank() == 0
        self.started = pgd.runtime.launcher.COMMAND_STARTED  # the budget counts start-up and data loading too
        self.buffer = np.zeros(AGREEMENT_SLOTS)
        self.checkpoint_seconds_here = 0.0  # rank 0's measurement, contributed at the next agreement
        self.signum, self.elapsed, self.slowest, self.checkpoint_seconds = 0, None, 0.0, 0.0

    def clock_here(self) -> float:
        """This rank's elapsed seconds since ``pgd`` started (the agreed clock when read on rank 0)."""
        return self.faults.clock() - self.started

    def contribute(self, out: np.ndarray) -> None:
        """Write this rank's share into ``out`` (``AGREEMENT_SLOTS`` doubles) before a SUM Allreduce."""
        out[0] = float(self.flag.signum == signal.SIGTERM)
        out[1] = float(self.flag.signum == signal.SIGUSR1)
        out[2] = self.clock_here() if self.is_root else 0.0
        out[3] = self.checkpoint_seconds_here if self.is_root else 0.0

    def accept(self, summed: np.ndarray) -> None:
        """Read the summed slots (every rank the same numbers)."""
        self.signum = signal.SIGTERM if summed[0] else signal.SIGUSR1 if summed[1] else 0
        elapsed = float(summed[2])
        if self.elapsed is not None:
            self.slowest = max(self.slowest, elapsed - self.elapsed)
        self.elapsed = elapsed
        self.checkpoint_seconds = float(summed[3])

    def agree(self) -> None:
        """Contribute, sum over the ranks (one Allreduce of four doubles), accept."""
        self.contribute(self.buffer)
        self.world.Allreduce(MPI.IN_PLACE, self.buffer, op=MPI.SUM)
        self.accept(self.buffer)


class Resilience:
    """Agreed stops and checkpoints of one training run, in any mode (see the module docstring).

    Parameters
    ----------
    cfg : pgd.config.RunConfig
        Uses ``checkpoint``, ``checkpoint_every``, ``checkpoint_seconds``, ``resume``, ``max_time``.
    world : mpi4py.MPI.Comm
        All ranks of the run.
    state : object
        ``state_dict()``, ``load_state_dict(state)`` and optionally ``rng``: an optimizer, or the state of
        a mode's own loop; it goes into the checkpoint.
    unit : str
        What the loop counts (``"iteration"``, ``"update"``), for messages.
    quiesce : callable, optional
        Collective; settles the state before a checkpoint is taken (``--mode shm``).
    """

    def __init__(self, cfg, world, state, *, unit: str = "iteration", quiesce=None):
        self.cfg, self.world, self.state, self.unit, self.quiesce = cfg, world, state, unit, quiesce
        self.faults = Faults(world.Get_rank())
        self.flag = adopt_signal_flag()
        self.agreement = Agreement(world, self.flag, self.faults)
        self.history = {}
        self.fingerprint = None
        self._checkpointed_at = 0  # iteration of the last checkpoint (or of the one resumed from)
        self._checkpoint_time = 0.0  # agreed elapsed time at that checkpoint

    def bind(self, history: dict, data) -> int | None:
        """Start: fingerprint the loaded data, and with ``--resume`` load the newest checkpoint (collective).

        Parameters
        ----------
        history : dict
            The run's history lists (rank 0's go into checkpoints); a resumed history is prepended.
        data : object
            This rank's loaded rows: ``meta``, ``X``, ``y``, ``start`` (and ``col_start``/``col_stop`` for
            a column block), as :class:`pgd.loader.host.RowSlab` has them.

        Returns
        -------
        int or None
            The iteration (or update count) resumed at.
        """
        self.history = history
        self.agreement.agree()  # the first point that step times are measured from
        if not self.cfg.checkpoint:
            return None
        meta = data.meta
        rows = int(data.X.shape[0]) if data.X is not None else 0
        cols = (getattr(data, "col_start", 0), getattr(data, "col_stop", meta.d) or meta.d)
        self.fingerprint = data_fingerprint(self.world, meta, data.X, data.y, rows=(data.start, data.start + rows),
                                            cols=cols)
        resumed = (resume(self.cfg, self.world, self.state, self.fingerprint, self.unit) if self.cfg.resume
                   else None)
        if resumed is None:
            return None
        iteration, saved = resumed
        for key, values in saved.items():
            history.setdefault(key, []).extend(values)
        self._checkpointed_at = iteration
        return iteration

    def _stop_reason(self, time_used: bool | None) -> str | None:
        agreed = self.agreement
        if agreed.signum:
            return f"signal {signal.Signals(agreed.signum).name}"
        if self.cfg.max_time:
            if time_used is None:
                # stop while a step (or segment) and a checkpoint still fit: twice the slowest, and the last write
                time_used = agreed.elapsed + 2 * agreed.slowest + 2 * agreed.checkpoint_seconds >= self.cfg.max_time
            if time_used:
                return f"time budget --max-time {self.cfg.max_time:g} s nearly used ({agreed.elapsed:.1f} s elapsed)"
        return None

    def checkpoint_due(self, iteration: int, elapsed: float) -> bool:
        """Whether ``--checkpoint-every`` or ``--checkpoint-seconds`` asks for a checkpoint now."""
        cfg, every = self.cfg, self.cfg.checkpoint_every
        return bool(cfg.checkpoint) and bool(
            (every and iteration // every > self._checkpointed_at // every)
            or (cfg.checkpoint_seconds and elapsed - self._checkpoint_time >= cfg.checkpoint_seconds))

    def checkpoint(self, iteration: int) -> None:
        """Write a checkpoint of the state at ``iteration`` (collective)."""
        started = time.monotonic()
        if self.quiesce is not None:
            self.quiesce()
        payload = checkpoint_payload(self.cfg, self.world, self.state, iteration, self.history, self.fingerprint)
        save_checkpoint(self.world, self.cfg.checkpoint, payload)
        self.agreement.checkpoint_seconds_here = time.monotonic() - started
        self._checkpointed_at, self._checkpoint_time = iteration, self.agreement.elapsed

    def decide(self, iteration: int, summed: np.ndarray | None = None, time_used: bool | None = None) -> str | None:
        """Take the decisions of one decision point; a collective call at the same ``iteration`` on all ranks.

        Parameters
        ----------
        iteration : int
            Iterations (or updates) done.
        summed : ndarray, optional
            The :class:`Agreement` slots already summed by the caller's own Allreduce (else agreed here).
        time_used : bool, optional
            Whether the time budget is used up, when the ranks agreed on it already (``--mode async``:
            server 0 judged it); by default the agreed clock and step times decide.

        Returns
        -------
        str or None
            A reason to finish normally (the time budget without ``--checkpoint``), or None to go on.

        Raises
        ------
        Preempted
            On a signal, or on the time budget with ``--checkpoint`` (after writing the checkpoint).
        """
        if summed is None:
            self.agreement.agree()
        else:
            self.agreement.accept(summed)
        cfg = self.cfg
        reason = self._stop_reason(time_used)
        if cfg.checkpoint and (reason is not None or self.checkpoint_due(iteration, self.agreement.elapsed)):
            self.checkpoint(iteration)
        if reason is None:
            return None
        if not cfg.checkpoint and not self.agreement.signum:
            return reason  # the time budget, like an iteration budget: the caller writes the model
        self.close()
        saved = (f"checkpoint {cfg.checkpoint} written; continue with --resume" if cfg.checkpoint
                 else "no --checkpoint given, so nothing was saved")
        raise Preempted(f"{reason} at {self.unit} {iteration}: {saved} (exit code {EXIT_PREEMPTED}, "
                        "no model file written)", collective=True)

    def close(self) -> None:
        """Give the signals back (the loop is over)."""
        self.flag.restore()


class DecisionSchedule:
    """The steps at which a loop with no collective of its own per step (``--mode shm``) takes its
    decisions: about every ``seconds``, spaced from agreed times only, so every rank keeps the same schedule.

    Parameters
    ----------
    step : int
        The loop's step now (0, or the step resumed at).
    elapsed : float
        The agreed elapsed time now (:attr:`Agreement.elapsed`).
    """

    def __init__(self, step: int, elapsed: float, seconds: float = DECISION_SECONDS):
        self.seconds = seconds
        self.next = step + 1
        self._last = (step, elapsed)

    def advance(self, step: int, elapsed: float) -> None:
        """After a decision at ``step`` (agreed ``elapsed``): set the next one, at most twice as far."""
        last_step, last_elapsed = self._last
        taken = step - last_step
        interval = 2 * taken
        if elapsed > last_elapsed:
            interval = min(interval, int(taken * self.seconds / (elapsed - last_elapsed)))
        interval = max(1, interval)
        self._last = (step, elapsed)
        self.next = step + interval


class ResilienceHook:
    """Loop hook of :func:`pgd.training.sync.train`: a :class:`Resilience` decision after every step, with the
    optimizer as the checkpointed state (parameters as for :class:`Resilience`)."""

    def __init__(self, cfg, world, optimizer):
        self.resilience = Resilience(cfg, world, optimizer)

    def resume(self, history: dict, data) -> int | None:
        """Bind the loop's ``history`` and loaded ``data``; with ``--resume`` load the newest checkpoint."""
        return self.resilience.bind(history, data)

    def after_step(self, iteration: int) -> str | None:
        """Agree on stopping, write a checkpoint when due; raises :class:`Preempted` to stop."""
        self.resilience.faults.pause()
        return self.resilience.decide(iteration)

    def close(self) -> None:
        """Give the signals back (the loop is over)."""
        self.resilience.close()


def make_resilience_hook(cfg, world, optimizer):
    """The :data:`pgd.training.sync.LOOP_HOOKS` factory for :class:`ResilienceHook`."""
    return ResilienceHook(cfg, world, optimizer)
