"""Communicators: how ranks combine gradients, plus collective agreement on errors.

Conventions
-----------
- Every method works **in place** on a contiguous buffer (NumPy, or CuPy on the GPU path) and sums.
- Only buffer-based (upper-case) mpi4py calls are used on the hot path; pickled lower-case calls appear
  only in start-up and shutdown helpers (error agreement, summaries).
- Each communicator counts its calls, bytes and the wall time spent in them (``MPI.Wtime``), so the
  training loop can split an iteration into compute / communication / other.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from pgd.errors import PgdError


class Communicator:
    """Interface: ``allreduce``, ``reduce``, ``bcast``, ``barrier`` with timing counters.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        The group of ranks that combine their buffers.
    """

    name = "base"

    def __init__(self, mpi_comm):
        self.mpi_comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the call, byte and time counters."""
        self.calls = 0
        self.bytes = 0
        self.seconds = 0.0

    def _count(self, buf, started: float) -> None:
        self.calls += 1
        self.bytes += buf.nbytes
        self.seconds += MPI.Wtime() - started

    def allreduce(self, buf) -> None:
        """Sum ``buf`` over all ranks; every rank ends with the same result."""
        raise NotImplementedError

    def reduce(self, buf, root: int = 0) -> None:
        """Sum ``buf`` over all ranks into ``buf`` on ``root`` (other ranks' ``buf`` is unchanged)."""
        started = MPI.Wtime()
        if self.size > 1:
            if self.rank == root:
                self.mpi_comm.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=root)
            else:
                self.mpi_comm.Reduce(buf, None, op=MPI.SUM, root=root)
        self._count(buf, started)

    def bcast(self, buf, root: int = 0) -> None:
        """Copy ``buf`` from ``root`` to every rank."""
        started = MPI.Wtime()
        if self.size > 1:
            self.mpi_comm.Bcast(buf, root=root)
        self._count(buf, started)

    def barrier(self) -> None:
        """Wait for every rank."""
        self.mpi_comm.Barrier()


class AllreduceCommunicator(Communicator):
    """One ``MPI_Allreduce`` per combine: the library picks the algorithm (ring, recursive doubling)."""

    name = "allreduce"

    def allreduce(self, buf) -> None:
        started = MPI.Wtime()
        if self.size > 1:
            self.mpi_comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self._count(buf, started)


class ReduceBcastCommunicator(Communicator):
    """``MPI_Reduce`` to rank 0 then ``MPI_Bcast``: every rank gets rank 0's bits by construction."""

    name = "reduce-bcast"

    def allreduce(self, buf) -> None:
        started = MPI.Wtime()
        if self.size > 1:
            if self.rank == 0:
                self.mpi_comm.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=0)
            else:
                self.mpi_comm.Reduce(buf, None, op=MPI.SUM, root=0)
            self.mpi_comm.Bcast(buf, root=0)
        self._count(buf, started)


COMMUNICATORS = {
    AllreduceCommunicator.name: AllreduceCommunicator,
    ReduceBcastCommunicator.name: ReduceBcastCommunicator,
}


def make_communicator(name: str, mpi_comm) -> Communicator:
    """Build the communicator called ``name`` (see :data:`COMMUNICATORS`) over ``mpi_comm``."""
    try:
        return COMMUNICATORS[name](mpi_comm)
    except KeyError:
        raise PgdError(f"unknown communicator {name!r}; choose from {', '.join(COMMUNICATORS)}",
                       collective=True) from None


def max_over_ranks(mpi_comm, values: list[float]) -> list[float]:
    """Element-wise maximum of ``values`` over the ranks of ``mpi_comm`` (one buffer Allreduce)."""
    buf = np.array(values, dtype=np.float64)
    mpi_comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
    return buf.tolist()


def raise_if_any(mpi_comm, error: PgdError | None) -> None:
    """Agree over ``mpi_comm`` on errors: if any rank has one, every rank raises the lowest rank's.

    A collective call: every rank must make it, with or without an error of its own.
    """
    reports = mpi_comm.allgather(None if error is None else (type(error), str(error)))
    first = next((report for report in reports if report is not None), None)
    if first is not None:
        error_type, message = first
        raise error_type(message, collective=True)


@contextmanager
def collectively(mpi_comm):
    """Run a block on every rank; a :class:`PgdError` on any rank is raised on all ranks after it.

    Examples
    --------
    >>> with collectively(MPI.COMM_WORLD):      # doctest: +SKIP
    ...     meta = inspect_dataset(path)
    """
    error = None
    try:
        yield
    except PgdError as caught:
        error = caught
    raise_if_any(mpi_comm, error)
