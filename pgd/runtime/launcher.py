"""Process start-up: the launcher's environment and BLAS threads per rank (the entry point is :mod:`pgd.cli.entry`).

Nothing here imports NumPy or mpi4py at module level: the BLAS thread count must be fixed in the
environment before NumPy loads its BLAS, and reading the launcher's environment must work before MPI
is initialised (to print a usage error once, from rank 0 only).
"""

from __future__ import annotations

import os
import re
import sys
import time

from pgd.errors import PgdError
from pgd.runtime import settings

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

BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


#: ``"N (reason)"`` once :func:`configure_blas_threads` ran in this process (the ``pgd`` entry point), else None.
BLAS_THREADS_RESOLVED: str | None = None


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
    global BLAS_THREADS_RESOLVED  # noqa: PLW0603 - one process-wide value, set before NumPy loads
    if settings.blas_threads(environ) is not None:
        threads, reason = settings.blas_threads(environ), "PGD_BLAS_THREADS"
    else:
        user = next((name for name in BLAS_VARS if environ.get(name, "").strip().isdigit()), None)
        if user is not None:
            threads, reason = int(environ[user]), user
        else:
            threads, reason = cores_per_rank(environ), "one per core available to the rank"
    threads = max(1, threads)
    for name in BLAS_VARS:
        environ[name] = str(threads)
    BLAS_THREADS_RESOLVED = f"{threads} ({reason})"
    environ["PGD_BLAS_THREADS_RESOLVED"] = BLAS_THREADS_RESOLVED  # for processes a benchmark launches
    return threads, reason


def blas_thread_count() -> int:
    """This rank's resolved BLAS threads (1 when :func:`configure_blas_threads` has not run: in-process use)."""
    text = BLAS_THREADS_RESOLVED or "1"
    return max(1, int(text.split()[0]))


def configure_mpi_environment(environ=os.environ) -> None:
    """Apply :data:`MPI_DEFAULTS` where the environment does not set them (before MPI starts)."""
    for name, value in MPI_DEFAULTS.items():
        environ.setdefault(name, value)


def mpi_world():
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
