"""One MPI launch for the SPMD tests: a pool of ranks that runs their jobs (``pgd`` commands and the
``mpi_*_check.py`` scripts) one after the other, each on a sub-communicator of the first ``k`` ranks.

Usage: ``mpirun -n N python spmd_server.py DIRECTORY CLIENT_PID`` (started by :class:`support.mpi.SpmdServer`;
the pool ends by itself when the client process is gone, so a killed test session leaves no ranks behind).  The
client writes ``job-<i>.json`` (atomically) for ``i = 0, 1, ...``; every rank polls for the next one (no MPI
while waiting, so idle ranks do not spin on a core; the polls back off to one per 20 ms).  A job is
``{"ranks": k, "kind": "pgd" | "script", "argv": [...], "env": {...}, "fake_cupy": bool, "cwd": path | null}``;
ranks ``0 .. k-1`` run it with

- ``MPI.COMM_WORLD`` replaced by their ``k``-rank communicator and the launcher's ``OMPI_COMM_WORLD_*``
  variables saying ``k`` ranks, so pgd (and a script) see a job of ``k`` ranks, as under ``mpirun -n k``;
- the job's environment variables set, and the fake CuPy importable when ``fake_cupy`` (removed afterwards,
  with every ``cupy`` module, so the next job meets a machine without CuPy again);
- standard output and error captured.

Rank 0 writes ``result-<i>.json``: every rank's exit code, output and error, in rank order.  An exception
that escapes a job (a bug in a test script: not a ``pgd`` error, which ends as an exit code) aborts the whole
pool, as it would abort an ``mpirun`` job; so does pgd's own abort of a failed rank.  The client then
reports that job's failure and starts a new pool for the next one.  A ``{"stop": true}`` job ends the pool.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import time
import traceback

from job_scope import exit_code, scoped_environment
from mpi4py import MPI

import pgd.cli.app  # noqa: F401 - imported once for every job (what a launch per job paid each time)
import pgd.training.sync  # noqa: F401
from pgd.cli.entry import main as pgd_main

WORLD = MPI.COMM_WORLD
FAKE_CUPY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_cupy")
#: Polling for the next job backs off from the first to the second (idle ranks must leave the cores to
#: the ranks at work: with more ranks than cores, every wake-up delays their collectives).
POLL_SECONDS = (0.001, 0.02)
LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                 "OMPI_COMM_WORLD_LOCAL_RANK")


def _client_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # alive, under another user
        return True
    return True


def _wait_for(path: str, client: int) -> dict | None:
    """The job at ``path`` once it exists, or None when the client is gone."""
    pause = POLL_SECONDS[0]
    while not os.path.exists(path):
        if pause >= POLL_SECONDS[1] and not _client_alive(client):
            return None
        time.sleep(pause)
        pause = min(2 * pause, POLL_SECONDS[1])
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def _as_job_of(comm, env: dict, fake_cupy: bool, cwd):
    """Within: ``comm`` is COMM_WORLD, the launcher's variables and ``env`` are set, the fake CuPy is
    importable when asked; all undone on the way out."""
    size, rank = comm.Get_size(), comm.Get_rank()
    launcher = {LAUNCHER_VARS[0]: size, LAUNCHER_VARS[1]: rank, LAUNCHER_VARS[2]: size, LAUNCHER_VARS[3]: rank}
    saved_argv, saved_cwd = list(sys.argv), os.getcwd()
    with scoped_environment({**launcher, **env}):
        if fake_cupy:
            sys.path.insert(0, FAKE_CUPY)
        if cwd:
            os.chdir(cwd)
        MPI.COMM_WORLD = comm
        try:
            yield
        finally:
            MPI.COMM_WORLD = WORLD
            os.chdir(saved_cwd)
            sys.argv[:] = saved_argv
            if fake_cupy:
                sys.path.remove(FAKE_CUPY)
                for name in [name for name in sys.modules if name == "cupy" or name.startswith(("cupy.", "cupyx"))]:
                    del sys.modules[name]


def _run(job: dict) -> int:
    """Run the job's command here; its exit code."""
    try:
        if job["kind"] == "pgd":
            pgd_main([str(arg) for arg in job["argv"]])
        else:
            script, *args = [str(arg) for arg in job["argv"]]
            sys.argv[:] = [script, *args]
            runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as stop:
        return exit_code(stop)


def run_job(job: dict, comm) -> dict:
    """One rank's part of ``job`` on ``comm``: ``{"code", "stdout", "stderr"}``."""
    out, err = io.StringIO(), io.StringIO()
    with _as_job_of(comm, job.get("env", {}), job.get("fake_cupy", False), job.get("cwd")):
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                comm.Barrier()
                code = _run(job)
        except BaseException:  # noqa: BLE001 - an escaped exception ends the whole pool, as it ends a job
            sys.stderr.write(err.getvalue() + traceback.format_exc())
            sys.stderr.flush()
            WORLD.Abort(1)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def serve(directory: str, client: int) -> None:
    rank = WORLD.Get_rank()
    communicators = {}
    WORLD.Barrier()
    if rank == 0:
        open(os.path.join(directory, "ready"), "w").close()
    index = 0
    while True:
        job = _wait_for(os.path.join(directory, f"job-{index}.json"), client)
        if job is None or job.get("stop"):
            return
        ranks = int(job["ranks"])
        if rank < ranks:
            if ranks not in communicators:
                communicators[ranks] = WORLD.Create_group(WORLD.Get_group().Incl(list(range(ranks))))
            comm = communicators[ranks]
            outcome = run_job(job, comm)
            outcomes = comm.gather(outcome, root=0)
            if rank == 0:
                final = os.path.join(directory, f"result-{index}.json")
                with open(final + ".part", "w", encoding="utf-8") as handle:
                    json.dump(outcomes, handle)
                os.replace(final + ".part", final)
        index += 1


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
