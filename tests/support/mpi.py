"""Launching pgd and test scripts under mpirun: the suite's one mpirun helper (:func:`mpirun_command`).

:func:`run_pgd` and :func:`run_python` start one ``mpirun`` per call, except while a :class:`SpmdServer` is
serving (the SPMD tests, ``tests/spmd/conftest.py``): then they hand the command to its pool of ranks, which
runs it on ``k`` of them with the same outcome (exit code, output, files) without a launch of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import SUPPORT
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
    """Run ``pgd ARGS`` under ``mpirun -n ranks`` (or on the serving :class:`SpmdServer`); returns the
    CompletedProcess (text mode)."""
    if SERVER is not None and SERVER.serves(ranks, env):
        return SERVER.run(ranks, "pgd", args, env=env, cwd=cwd, timeout=timeout)
    command = mpirun_command(ranks, sys.executable, "-m", "pgd", *args)
    full_env = dict(os.environ, PGD_BLAS_THREADS="1", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def run_python(ranks: int, script: str, *args, timeout: float = 120, env: dict | None = None):
    """Run a Python file under ``mpirun -n ranks`` (or on the serving :class:`SpmdServer`)."""
    if SERVER is not None and SERVER.serves(ranks, env):
        return SERVER.run(ranks, "script", (script, *args), env=env, timeout=timeout)
    command = mpirun_command(ranks, sys.executable, script, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PGD_BLAS_THREADS="1", **(env or {})))


#: The fake CuPy (a folder to put first on ``PYTHONPATH``): ``--device gpu`` then runs the GPU path's host code.
FAKE_CUPY_PATH = str(SUPPORT / "fake_cupy")
#: Environment variables a pool serves per job; any other (``OMPI_*``, thread counts, ...) takes effect only
#: at a process's start, so a command that sets one gets a launch of its own.
_PER_JOB_ENV_PREFIXES = ("PGD_",)


def fake_cupy_env() -> dict:
    """The environment that makes the fake CuPy importable (``PYTHONPATH``)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [FAKE_CUPY_PATH, os.environ.get("PYTHONPATH")]))}


#: The array backends an SPMD test is parametrised over: ``name -> (pgd options, environment)``.  ``numpy``
#: is the host path; ``fake-cupy`` runs the GPU path's host code (device buffers, staging, fused kernels
#: checked and run by their NumPy models) on the fake CuPy.
BACKENDS = {"numpy": (("--device", "cpu"), {}), "fake-cupy": (("--device", "gpu"), fake_cupy_env())}


class SpmdServer:
    """A pool of ``size`` MPI ranks (one ``mpirun``, ``tests/support/spmd_server.py``) that runs the SPMD
    tests' commands one after the other, each on its first ``k`` ranks.

    A command whose job aborts the pool (pgd's abort of a failed rank, an escaped exception) gets the
    launcher's exit code and the pool's output, and the next command starts a new pool.
    """

    def __init__(self, size: int, directory):
        self.size, self.directory = int(size), Path(directory)
        self._process = None
        self._pools = itertools.count()

    def serves(self, ranks: int, env: dict | None) -> bool:
        """Whether a command on ``ranks`` ranks with ``env`` can run on the pool."""
        for name, value in (env or {}).items():
            if name == "PYTHONPATH" and value == fake_cupy_env()["PYTHONPATH"]:
                continue
            if not name.startswith(_PER_JOB_ENV_PREFIXES):
                return False
        return MPIRUN is not None and 1 <= int(ranks) <= self.size

    def _start(self) -> None:
        if self._process is not None:      # the previous pool ended (an abort): release its output file
            self._out.close()
        self._pool_dir = self.directory / f"pool-{next(self._pools)}"
        self._pool_dir.mkdir(parents=True)
        self._index = 0
        self._out = open(self._pool_dir / "output.txt", "w+", encoding="utf-8")  # noqa: SIM115 - the pool's life
        env = dict(os.environ, PGD_BLAS_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self._process = subprocess.Popen(
            mpirun_command(self.size, sys.executable, support_script("spmd_server.py"), self._pool_dir, os.getpid()),
            stdout=self._out, stderr=subprocess.STDOUT, env=env, text=True)

    def _output(self) -> str:
        self._out.flush()
        return (self._pool_dir / "output.txt").read_text(encoding="utf-8", errors="replace")

    def run(self, ranks: int, kind: str, argv, *, env=None, cwd=None, timeout: float = 120):
        """Run one command (``kind``: ``"pgd"`` or ``"script"``) on ``ranks`` ranks; a CompletedProcess."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        fake_cupy = "PYTHONPATH" in (env or {})
        job = {"ranks": int(ranks), "kind": kind, "argv": [str(arg) for arg in argv], "cwd": str(cwd) if cwd else None,
               "env": {name: str(value) for name, value in (env or {}).items() if name != "PYTHONPATH"},
               "fake_cupy": fake_cupy}
        index, self._index = self._index, self._index + 1
        path = self._pool_dir / f"job-{index}.json"
        path.with_suffix(".part").write_text(json.dumps(job), encoding="utf-8")
        os.replace(path.with_suffix(".part"), path)
        result, deadline = self._pool_dir / f"result-{index}.json", time.monotonic() + timeout
        while not result.exists():
            code = self._process.poll()
            if code is not None:        # the job aborted the pool: what mpirun -n k would have reported
                return subprocess.CompletedProcess(argv, code, "", self._output())
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise subprocess.TimeoutExpired(argv, timeout, output=self._output())
            time.sleep(0.002)
        outcomes = json.loads(result.read_text(encoding="utf-8"))
        code = next((outcome["code"] for outcome in outcomes if outcome["code"]), 0)
        return subprocess.CompletedProcess(argv, code, "".join(outcome["stdout"] for outcome in outcomes),
                                           "".join(outcome["stderr"] for outcome in outcomes))

    def stop(self, kill: bool = False) -> None:
        """End the pool (a stop job, or kill it)."""
        if self._process is None:
            return
        if self._process.poll() is None and not kill:
            path = self._pool_dir / f"job-{self._index}.json"
            path.with_suffix(".part").write_text(json.dumps({"stop": True}), encoding="utf-8")
            os.replace(path.with_suffix(".part"), path)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill = True
        if kill and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._out.close()
        self._process = None


#: The pool serving :func:`run_pgd` and :func:`run_python`, while one does (``tests/spmd/conftest.py``).
SERVER: SpmdServer | None = None


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
