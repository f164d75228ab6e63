"""Process start-up: the launcher's environment, BLAS threads per rank, and the ``pgd`` entry point.

Nothing here imports NumPy or mpi4py at module level: the BLAS thread count must be fixed in the
environment before NumPy loads its BLAS, and reading the launcher's environment must work before MPI
is initialised (to print a usage error once, from rank 0 only).
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback

from pgd.errors import EXIT_INTERNAL, PgdError

#: Environment variables that launchers set, in order of preference.
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK",
              "PALS_RANKID")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE",
                    "MV2_COMM_WORLD_LOCAL_SIZE")
#: ``time.monotonic()`` when the ``pgd`` command started (budgets such as ``--max-time`` count from here).
COMMAND_STARTED = time.monotonic()

#: Open MPI settings for pgd's own processes, applied unless already set (``OMPI_MCA_*`` variables are read
#: when MPI starts; a variable set by the user or by ``mpirun --mca`` wins). Open MPI's UCX one-sided component,
#: built into the PyPI Open MPI, prints "osc_ucx_component.c:375 Error: ..." on every rank that creates a window
#: on a machine without UCX transports; pgd's only window is node-local shared memory (``--mode shm``), which
#: the ``sm`` component serves everywhere, so pgd never needs it.
MPI_DEFAULTS = {"OMPI_MCA_osc": "^ucx"}

_BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _first_int(names, environ) -> int | None:
    for name in names:
        value = environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return None


def launcher_rank(environ=os.environ) -> int:
    """This process's rank as the launcher announced it (0 when not launched by one)."""
    return _first_int(_RANK_VARS, environ) or 0


def launcher_size(environ=os.environ) -> int | None:
    """The world size the launcher announced, or None outside a launcher."""
    return _first_int(_SIZE_VARS, environ)


def launcher_local_size(environ=os.environ) -> int:
    """How many ranks of this job the launcher put on this node (1 when unknown)."""
    local = _first_int(_LOCAL_SIZE_VARS, environ)
    if local is None and environ.get("SLURM_STEP_TASKS_PER_NODE"):
        # e.g. "4(x2),3": the first node's count is a fair answer for a homogeneous step
        match = re.match(r"(\d+)", environ["SLURM_STEP_TASKS_PER_NODE"])
        local = int(match.group(1)) if match else None
    return max(1, local or 1)


def cores_per_rank(environ=os.environ) -> int:
    """CPU cores available to this rank: its affinity mask if the launcher bound it, else a fair share."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    total = os.cpu_count() or affinity
    if affinity < total:  # bound by the launcher (mpirun --bind-to, srun --cpus-per-task)
        return max(1, affinity)
    return max(1, total // launcher_local_size(environ))


def configure_blas_threads(environ=os.environ) -> tuple[int, str]:
    """Fix the BLAS/OpenMP thread count of this rank before NumPy is imported.

    ``PGD_BLAS_THREADS`` wins; otherwise an explicit ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/...
    from the user is kept; otherwise one thread per core available to the rank.

    Returns
    -------
    (threads, reason)
    """
    if environ.get("PGD_BLAS_THREADS", "").strip().isdigit():
        threads, reason = int(environ["PGD_BLAS_THREADS"]), "PGD_BLAS_THREADS"
    else:
        user = next((name for name in _BLAS_VARS if environ.get(name, "").strip().isdigit()), None)
        if user is not None:
            threads, reason = int(environ[user]), user
        else:
            threads, reason = cores_per_rank(environ), "one per core available to the rank"
    threads = max(1, threads)
    for name in _BLAS_VARS:
        environ[name] = str(threads)
    environ["PGD_BLAS_THREADS_RESOLVED"] = f"{threads} ({reason})"
    return threads, reason


def configure_mpi_environment(environ=os.environ) -> None:
    """Apply :data:`MPI_DEFAULTS` where the environment does not set them (before MPI starts)."""
    for name, value in MPI_DEFAULTS.items():
        environ.setdefault(name, value)


def _mpi_world():
    """COMM_WORLD if mpi4py is loaded and MPI is initialised and not finalised, else None."""
    mpi_module = sys.modules.get("mpi4py.MPI")
    if mpi_module is None:
        return None
    try:
        if mpi_module.Is_initialized() and not mpi_module.Is_finalized():
            return mpi_module.COMM_WORLD
    except Exception:  # pragma: no cover - defensive
        return None
    return None


def refuse_singletons(world, environ=os.environ) -> None:
    """Refuse to run when the launcher started N ranks but MPI gave each a world of its own.

    This happens when mpi4py's MPI is not the launcher's (another ``mpirun`` on PATH, or ``srun`` without
    PMI support): N copies would each train alone and overwrite each other's outputs.
    """
    announced = launcher_size(environ)
    if announced and announced > 1 and world.Get_size() == 1:
        raise PgdError(f"the launcher started {announced} ranks but MPI sees a world of 1 on each: mpi4py is "
                       "built against a different MPI than the launcher; use that MPI's mpirun, "
                       "`srun --mpi=pmix`, or rebuild mpi4py against the launcher's MPI")


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
    global COMMAND_STARTED  # noqa: PLW0603 - one process-wide start time
    COMMAND_STARTED = time.monotonic()
    configure_blas_threads()
    configure_mpi_environment()
    import click  # noqa: PLC0415 - after the BLAS environment is set

    from pgd.cli import cli  # noqa: PLC0415

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
        if os.environ.get("PGD_DEBUG"):
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
