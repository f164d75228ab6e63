"""The ``pgd`` entry point (also ``python -m pgd``): usage errors once, the same exit on every rank, abort on a
failure of one rank.

The BLAS thread count is fixed before anything imports NumPy, and click and the commands are imported only
after that (``pgd --help`` stays fast: MPI starts only in the commands that need it).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from pgd.errors import EXIT_INTERNAL, PgdError
from pgd.runtime import launcher
from pgd.runtime.launcher import configure_blas_threads, configure_mpi_environment, launcher_rank, launcher_size
from pgd.runtime.launcher import mpi_world as _mpi_world
from pgd.runtime.settings import debug_traceback


def abort_job(code: int) -> None:
    """End the whole MPI job (all ranks) with ``code``; a plain exit when there is no job to abort."""
    sys.stdout.flush()
    sys.stderr.flush()
    world = _mpi_world()
    if world is not None and world.Get_size() > 1:
        world.Abort(code)
    os._exit(code)


def wait_for_all_ranks() -> None:
    """Barrier before a collective non-zero exit, so that rank 0's message is out before any rank exits.

    The launcher ends the whole job as soon as one rank exits non-zero; without this, a fast rank could
    take rank 0 down before its one-line message was written.  Initialises MPI if needed (error path only).
    """
    if (launcher_size() or 1) <= 1:
        return
    world = _mpi_world()
    if world is None and "mpi4py.MPI" not in sys.modules:
        from mpi4py import MPI  # noqa: PLC0415

        world = MPI.COMM_WORLD
    if world is not None:
        world.Barrier()


def report_error(error: PgdError, rank: int) -> int:
    """Print a :class:`PgdError` (rank 0 for collective errors) and return its exit code, or abort."""
    world = _mpi_world()
    size = world.Get_size() if world is not None else (launcher_size() or 1)
    if error.collective or size == 1:
        if rank == 0:
            print(f"pgd: {getattr(error, 'prefix', 'error')}: {error}", file=sys.stderr, flush=True)
        wait_for_all_ranks()
        return error.exit_code
    print(f"pgd: error on rank {rank}: {error}", file=sys.stderr, flush=True)
    abort_job(error.exit_code)
    return error.exit_code  # pragma: no cover - abort does not return


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``pgd ...`` (also ``python -m pgd``)."""
    launcher.COMMAND_STARTED = time.monotonic()
    configure_blas_threads()
    configure_mpi_environment()
    import click  # noqa: PLC0415 - after the BLAS environment is set

    from pgd.cli.app import cli  # noqa: PLC0415

    rank = launcher_rank()
    try:
        result = cli.main(args=argv, prog_name="pgd", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as stop:
        code = stop.exit_code
    except click.ClickException as usage:  # identical on every rank: same argv, same environment
        if rank == 0:
            usage.show()
            sys.stderr.flush()
        wait_for_all_ranks()
        code = usage.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        print(f"pgd: interrupted (rank {rank})", file=sys.stderr, flush=True)
        abort_job(130)
        code = 130
    except PgdError as error:
        code = report_error(error, _mpi_rank_or(rank))
    except Exception as error:  # an unexpected failure on this rank must take the whole job down
        rank = _mpi_rank_or(rank)
        print(f"pgd: internal error on rank {rank}: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)
        if debug_traceback():
            traceback.print_exc()
        else:
            print("pgd: set PGD_DEBUG=1 for the traceback", file=sys.stderr, flush=True)
        abort_job(EXIT_INTERNAL)
        code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.exit(code)


def _mpi_rank_or(default: int) -> int:
    world = _mpi_world()
    return world.Get_rank() if world is not None else default
