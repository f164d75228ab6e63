"""Shared test helpers: launching pgd under mpirun, and small datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

BIN_DIR = os.path.dirname(sys.executable)
MPIRUN = shutil.which("mpirun", path=BIN_DIR + os.pathsep + os.environ.get("PATH", ""))
MPIRUN_FLAGS = ["--oversubscribe"] + (["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0
                                      else [])

# The PyPI Open MPI spends about 1 s of every MPI_Init (mpirun and singletons) probing the libfabric
# transport; the tests run on one machine, so leave it out (never do this on a cluster's fabric).
os.environ.setdefault("OMPI_MCA_btl", "^ofi")

needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")


def run_pgd(ranks: int, *args, timeout: float = 120, env: dict | None = None, cwd=None):
    """Run ``pgd ARGS`` under ``mpirun -n ranks``; returns the CompletedProcess (text mode)."""
    if MPIRUN is None:
        pytest.skip("mpirun not found")
    command = [MPIRUN, *MPIRUN_FLAGS, "-n", str(ranks), sys.executable, "-m", "pgd", *map(str, args)]
    full_env = dict(os.environ, PGD_BLAS_THREADS="1", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def run_python(ranks: int, script: str, *args, timeout: float = 120, env: dict | None = None):
    """Run a Python file under ``mpirun -n ranks``."""
    if MPIRUN is None:
        pytest.skip("mpirun not found")
    command = [MPIRUN, *MPIRUN_FLAGS, "-n", str(ranks), sys.executable, script, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PGD_BLAS_THREADS="1", **(env or {})))


def write_dataset(path, X, y=None, **attrs):
    """Write an HDF5 dataset in pgd's format (X chunked by rows)."""
    with h5py.File(path, "w") as handle:
        handle.attrs["pgd_format"] = 1
        for key, value in attrs.items():
            handle.attrs[key] = value
        X = np.asarray(X)
        handle.create_dataset("X", data=X, chunks=(max(1, min(len(X), 64)),) + X.shape[1:]
                              if X.ndim == 2 and X.size else None)
        if y is not None:
            handle.create_dataset("y", data=np.asarray(y))
    return str(path)


def read_weights(path):
    """``(w, b, attrs)`` of a model file."""
    with h5py.File(path, "r") as handle:
        return handle["w"][...], float(handle["b"][()]), dict(handle.attrs)


def write_loss_datasets(path, n: int, d: int, seed: int, intercept: float = 0.0) -> dict:
    """A regression and a binary dataset on one random ``X`` (n x d): ``{"squared": path, "logistic": path}``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    true = rng.standard_normal(d)
    return {"squared": write_dataset(path / "reg.h5", X, X @ true + intercept + 0.1 * rng.standard_normal(n)),
            "logistic": write_dataset(path / "bin.h5", X, (X @ true + rng.logistic(size=n) > 0).astype(float))}


def train_params(ranks: int, out, *args, env: dict | None = None, timeout: float = 300):
    """Run ``pgd train ARGS --out OUT`` (must succeed); returns ``([w, b], model attributes, stdout)``."""
    result = run_pgd(ranks, "train", *args, "--out", out, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    w, b, attrs = read_weights(out)
    return np.append(w, b), attrs, result.stdout


def run_cases(ranks: int, cases: list, workdir, timeout: float = 120, env: dict | None = None) -> list:
    """Run several ``pgd`` commands in one ``mpirun -n ranks`` job (see ``mpi_cases.py``); returns, per case,
    ``{"code", "stdout", "stderr"}`` (rank 0's) and ``"codes_by_rank"``, ``"stderr_by_rank"``."""
    import json  # noqa: PLC0415

    plan, results = os.path.join(workdir, "plan.json"), os.path.join(workdir, "results.json")
    with open(plan, "w", encoding="utf-8") as handle:
        json.dump(cases, handle, default=str)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_cases.py")
    finished = run_python(ranks, script, plan, results, timeout=timeout, env=env)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    with open(results, encoding="utf-8") as handle:
        outcome = json.load(handle)
    os.unlink(plan)
    os.unlink(results)
    return outcome


def snapshot(directory) -> dict:
    """``{name: bytes}`` of every file under ``directory`` (to prove that nothing was changed)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


def assert_one_error_line(result: dict, fragment: str, code: int = 2) -> str:
    """Every rank exited with ``code``; rank 0 alone printed, and one ``pgd: error:`` (or usage) line that holds
    ``fragment``; no traceback. Returns the line."""
    assert result["codes_by_rank"] == [code] * len(result["codes_by_rank"]), result["stderr"]
    assert not any(result["stderr_by_rank"][1:]), result["stderr_by_rank"]
    lines = [line for line in result["stderr"].splitlines() if line.startswith(("pgd: error", "Error:"))]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    assert fragment in lines[0], lines[0]
    return lines[0]
