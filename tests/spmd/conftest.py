"""The SPMD tests share one MPI launch: a pool of ranks (:class:`support.mpi.SpmdServer`) runs their
``pgd`` commands and check scripts, each on as many of its ranks as the test asks for.  The pool starts
with the first SPMD test (before any of their fixtures, which launch commands too) and stops after the
last; tests elsewhere launch ``mpirun`` as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import mpi

#: Ranks in the pool: the most any SPMD test asks for (more ranks than rows: 6).
POOL_RANKS = 6
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session", autouse=True)
def spmd_pool(tmp_path_factory):
    """The pool serving :func:`support.mpi.run_pgd` and ``run_python`` during the SPMD tests."""
    server = mpi.SpmdServer(POOL_RANKS, tmp_path_factory.mktemp("spmd-pool")) if mpi.MPIRUN else None
    mpi.SERVER = server
    yield server
    _stop()


def _stop() -> None:
    if mpi.SERVER is not None:
        mpi.SERVER.stop()
    mpi.SERVER = None


def pytest_runtest_teardown(item, nextitem):
    """After the last SPMD test, stop the pool: tests elsewhere launch their own jobs."""
    if nextitem is None or HERE not in Path(str(nextitem.fspath)).resolve().parents:
        _stop()
