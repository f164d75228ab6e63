"""Launching pgd and test scripts under mpirun: the suite's one mpirun helper (:func:`mpirun_command`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from support import script as support_script
from support.files import read_weights

BIN_DIR = os.path.dirname(sys.executable)
MPIRUN = shutil.which("mpirun", path=BIN_DIR + os.pathsep + os.environ.get("PATH", ""))
MPIRUN_FLAGS = ["--oversubscribe"] + (["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0
                                      else [])

needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")


def mpirun_command(ranks: int, *argv) -> list[str]:
    """``mpirun [flags] -n RANKS ARGV...`` (the one way the suite launches MPI); skips the test without mpirun."""
    if MPIRUN is None:
        pytest.skip("mpirun not found")
    return [MPIRUN, *MPIRUN_FLAGS, "-n", str(ranks), *map(str, argv)]


def run_pgd(ranks: int, *args, timeout: float = 120, env: dict | None = None, cwd=None):
    """Run ``pgd ARGS`` under ``mpirun -n ranks``; returns the CompletedProcess (text mode)."""
    command = mpirun_command(ranks, sys.executable, "-m", "pgd", *args)
    full_env = dict(os.environ, PGD_BLAS_THREADS="1", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def run_python(ranks: int, script: str, *args, timeout: float = 120, env: dict | None = None):
    """Run a Python file under ``mpirun -n ranks``."""
    command = mpirun_command(ranks, sys.executable, script, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PGD_BLAS_THREADS="1", **(env or {})))


def results_by_ranks(script: str, *args, ranks=(1, 2, 3), timeout: float = 300) -> dict:
    """``{ranks: result}``: run ``script ARGS`` under each rank count; the result is the JSON of its first
    ``RESULT {...}`` line (the run must succeed)."""
    results = {}
    for count in ranks:
        done = run_python(count, script, *args, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
        results[count] = json.loads(lines[0][len("RESULT "):])
    return results


def train_params(ranks: int, out, *args, env: dict | None = None, timeout: float = 300):
    """Run ``pgd train ARGS --out OUT`` (must succeed); returns ``([w, b], model attributes, stdout)``."""
    result = run_pgd(ranks, "train", *args, "--out", out, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    w, b, attrs = read_weights(out)
    return np.append(w, b), attrs, result.stdout


def run_cases(ranks: int, cases: list, workdir, timeout: float = 120, env: dict | None = None) -> list:
    """Run several ``pgd`` commands in one ``mpirun -n ranks`` job (see ``mpi_cases.py``); returns, per case,
    ``{"code", "stdout", "stderr"}`` (rank 0's) and ``"codes_by_rank"``, ``"stderr_by_rank"``."""
    plan, results = os.path.join(workdir, "plan.json"), os.path.join(workdir, "results.json")
    with open(plan, "w", encoding="utf-8") as handle:
        json.dump(cases, handle, default=str)
    finished = run_python(ranks, support_script("mpi_cases.py"), plan, results, timeout=timeout, env=env)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    with open(results, encoding="utf-8") as handle:
        outcome = json.load(handle)
    os.unlink(plan)
    os.unlink(results)
    return outcome
