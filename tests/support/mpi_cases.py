"""Run under mpirun: several ``pgd`` commands in one job, one after the other, so a test pays one MPI start-up.

Usage: ``mpirun -n N python mpi_cases.py PLAN.json RESULTS.json``. The plan is a list of cases
``{"args": [...], "env": {...}, "signal": {"rank": R, "when_exists": PATH, "name": "SIGTERM"}}`` (``env``
and ``signal`` optional); each case runs :func:`pgd.cli.entry.main` with ``env`` set (and removed afterwards),
and ``signal`` sends that signal to rank R's own process as soon as PATH exists (a first checkpoint: the run
is under way). Rank 0 writes, per case, the exit
code and what it printed on standard output and standard error (and every rank's exit code and standard
error). An internal error aborts the whole job,
which fails the calling test, as it should.
"""

import contextlib
import io
import json
import os
import signal
import sys
import threading

from job_scope import exit_code, scoped_environment
from mpi4py import MPI

import pgd.cli.app  # noqa: F401 - imported before the cases, so a case's --max-time does not pay for imports
import pgd.training.sync  # noqa: F401
from pgd.cli.entry import main


def send_signal(spec: dict, done: threading.Event) -> None:
    """Once ``spec["when_exists"]`` exists (the run is under way), send ``spec["name"]`` to this process."""
    while not os.path.exists(spec["when_exists"]):
        if done.wait(0.01):
            return
    os.kill(os.getpid(), getattr(signal, spec["name"]))


def run_case(case: dict) -> dict:
    world = MPI.COMM_WORLD
    sender, done = None, threading.Event()
    if case.get("signal") and case["signal"]["rank"] == world.Get_rank():
        sender = threading.Thread(target=send_signal, args=(case["signal"], done), daemon=True)
    out, err = io.StringIO(), io.StringIO()
    with scoped_environment(case.get("env", {})):
        world.Barrier()
        if sender is not None:
            sender.start()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(arg) for arg in case["args"]])
                code = 0
            except SystemExit as stop:
                code = exit_code(stop)
        done.set()
        if sender is not None:
            sender.join()
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_plan(plan_path: str, results_path: str) -> None:
    with open(plan_path, encoding="utf-8") as handle:
        plan = json.load(handle)
    results = [run_case(case) for case in plan]
    codes = MPI.COMM_WORLD.gather([result["code"] for result in results], root=0)
    errors = MPI.COMM_WORLD.gather([result["stderr"] for result in results], root=0)
    if MPI.COMM_WORLD.Get_rank() == 0:
        for index, result in enumerate(results):
            result["codes_by_rank"] = [rank_codes[index] for rank_codes in codes]
            result["stderr_by_rank"] = [rank_errors[index] for rank_errors in errors]
        with open(results_path, "w", encoding="utf-8") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    run_plan(sys.argv[1], sys.argv[2])
