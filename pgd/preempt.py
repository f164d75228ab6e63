"""Never lose work: periodic checkpoints, preemption signals and a wall-clock budget as one loop hook.

SIGTERM and SIGUSR1 only set a flag.  After every step the ranks combine their flags and their elapsed
times with one tiny ``Allreduce(MAX)`` of two doubles, so they all take the same decision at the same
iteration: write a checkpoint (every ``--checkpoint-every`` iterations, every ``--checkpoint-seconds``
seconds, and when stopping), and stop on a signal or before ``--max-time`` runs out.  A stopped run exits
with :data:`pgd.errors.EXIT_PREEMPTED` (75) on every rank and writes no model file: the checkpoint is
what it leaves, and ``--resume`` continues from it.

``PGD_TEST_SLEEP_PER_ITER`` (seconds, test-only) slows every iteration down so a test can deliver a
signal mid-run; it is not a user option.
"""

from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
from mpi4py import MPI

import pgd.launch
from pgd.checkpoint import checkpoint_payload, data_fingerprint, resume, save_checkpoint
from pgd.comm import collectively
from pgd.errors import EXIT_PREEMPTED, PgdError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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


def adopt_signal_flag() -> SignalFlag:
    """The flag installed by :func:`catch_signals_early` (with any signal it caught), else a new one."""
    global _EARLY_FLAG
    flag, _EARLY_FLAG = _EARLY_FLAG, None
    if flag is None:
        flag = SignalFlag()
        flag.install()
    return flag


def parse_duration(text) -> float:
    """Seconds from ``S``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (SLURM's time format)."""
    text = str(text).strip()
    days = 0
    if "-" in text[1:]:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [float(part) for part in text.split(":")]
    if len(parts) > 3 or days < 0 or any(not math.isfinite(p) or p < 0 for p in parts):
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


class ResilienceHook:
    """Loop hook: agreed stop decisions, periodic and final checkpoints (see the module docstring).

    Parameters
    ----------
    cfg : pgd.config.RunConfig
        Uses ``checkpoint``, ``checkpoint_every``, ``checkpoint_seconds``, ``max_time``.
    world : mpi4py.MPI.Comm
        All ranks of the run.
    optimizer : pgd.optim.Optimizer
        Its ``state_dict`` goes into the checkpoint.
    """

    def __init__(self, cfg, world, optimizer):
        self.cfg, self.world, self.optimizer = cfg, world, optimizer
        self.history = None
        self.flag = adopt_signal_flag()
        self.max_time = cfg.max_time
        self._agreed = np.zeros(2, dtype=np.float64)  # [signal number, elapsed seconds], MAX over ranks
        self._last_checkpoint_time = 0.0
        self._started = pgd.launch.COMMAND_STARTED  # the budget counts start-up and data loading too
        self._last_elapsed = time.monotonic() - self._started  # steps are timed from here
        self._slowest_step = 0.0
        self._checkpoint_seconds = 0.0
        self._sleep = float(os.environ.get("PGD_TEST_SLEEP_PER_ITER", "0") or 0)
        self.fingerprint = None
        if cfg.checkpoint:
            with collectively(world):
                if world.Get_rank() == 0:
                    self.fingerprint = data_fingerprint(cfg.data, cfg.x_key, cfg.y_key, cfg.hdf5_locking)
            self.fingerprint = world.bcast(self.fingerprint, root=0)

    def resume(self, history: dict) -> int | None:
        """Bind the loop's ``history``; with ``--resume`` load the newest checkpoint (iteration or None)."""
        self.history = history
        if not (self.cfg.checkpoint and self.cfg.resume):
            return None
        resumed = resume(self.cfg, self.world, self.optimizer, self.fingerprint)
        if resumed is None:
            return None
        iteration, saved = resumed
        for key, values in saved.items():
            history.setdefault(key, []).extend(values)
        return iteration

    def _agree(self) -> tuple[int, float]:
        self._agreed[0] = self.flag.signum
        self._agreed[1] = time.monotonic() - self._started
        self.world.Allreduce(MPI.IN_PLACE, self._agreed, op=MPI.MAX)
        return int(self._agreed[0]), float(self._agreed[1])

    def _stop_reason(self, signum: int, elapsed: float) -> str | None:
        if signum:
            return f"signal {signal.Signals(signum).name}"
        if self.max_time:
            # stop while a step and a checkpoint still fit: twice the slowest step, plus the last write
            margin = 2 * self._slowest_step + 2 * self._checkpoint_seconds
            if elapsed + margin >= self.max_time:
                return f"time budget --max-time {self.max_time:g} s nearly used ({elapsed:.1f} s elapsed)"
        return None

    def after_step(self, iteration: int) -> str | None:
        """Agree on stopping, write a checkpoint when due; raises :class:`Preempted` to stop."""
        if self._sleep:
            time.sleep(self._sleep)
        signum, elapsed = self._agree()
        self._slowest_step = max(self._slowest_step, elapsed - self._last_elapsed)
        self._last_elapsed = elapsed
        reason = self._stop_reason(signum, elapsed)
        cfg = self.cfg
        due = bool(cfg.checkpoint) and (
            reason is not None
            or (cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0)
            or (cfg.checkpoint_seconds and elapsed - self._last_checkpoint_time >= cfg.checkpoint_seconds))
        if due:
            started = time.monotonic()
            payload = checkpoint_payload(cfg, self.world, self.optimizer, iteration, self.history or {},
                                         self.fingerprint)
            save_checkpoint(self.world, cfg.checkpoint, payload)
            self._checkpoint_seconds = time.monotonic() - started
            self._last_checkpoint_time = elapsed
        if reason is None:
            return None
        self.flag.restore()
        saved = (f"checkpoint {cfg.checkpoint} written; continue with --resume" if cfg.checkpoint
                 else "no --checkpoint given, so nothing was saved")
        raise Preempted(f"{reason} at iteration {iteration}: {saved} (exit code {EXIT_PREEMPTED}, "
                        "no model file written)", collective=True)

    def close(self) -> None:
        """Give the signals back (the loop is over)."""
        self.flag.restore()


def make_resilience_hook(cfg, world, optimizer):
    """The :data:`pgd.train.LOOP_HOOKS` factory for :class:`ResilienceHook`."""
    return ResilienceHook(cfg, world, optimizer)
