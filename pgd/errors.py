"""Errors that pgd reports to the user as one line, and their exit codes.

Conventions
-----------
- :class:`PgdError` and its subclasses carry a one-line, user-facing message; the entry point
  (:mod:`pgd.runtime.launcher`) prints ``pgd: error: <message>`` on rank 0 and exits with ``exit_code``.
- ``collective=True`` means every rank raises the same error at the same point (the ranks agreed on it),
  so all can exit together.  A non-collective error on one rank aborts the whole job instead, since the
  other ranks may be waiting in a collective.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_NOT_CONVERGED = 3  # --require-convergence and the optimality test did not hold
EXIT_DIVERGED = 4
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early on a signal or time budget, resumable


class PgdError(Exception):
    """A user-facing error with a one-line message."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, collective: bool = False):
        super().__init__(" ".join(str(message).split()))
        self.collective = collective


class InputError(PgdError):
    """Bad input data, model file or option value."""


class TrainingError(PgdError):
    """Training could not go on (divergence, numerical failure)."""

    exit_code = EXIT_INTERNAL


class DivergedError(TrainingError):
    """The objective blew up (non-finite, or far above its starting value) with a fixed step size."""

    exit_code = EXIT_DIVERGED


class NotConvergedError(PgdError):
    """``--require-convergence`` and the run ended without meeting the optimality test."""

    exit_code = EXIT_NOT_CONVERGED
