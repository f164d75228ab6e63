"""Run under mpirun by tests/test_right_model.py: pgd's default runs on real data, in one launch.

Usage: ``mpirun -n N python mpi_right_model_check.py WORKDIR``; WORKDIR holds the datasets the test wrote.
Trains every configuration of :func:`_configs` through the Python API (:func:`pgd.training.sync.train`) and
writes ``model-<name>-<N>.h5``; rank 0 prints one line ``RESULT <json>`` with each run's summary facts.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mpi4py import MPI  # noqa: E402

from pgd.cli.options import train_config  # noqa: E402
from pgd.training.sync import train  # noqa: E402


def _configs() -> dict:
    """name -> options (``data`` relative to the work directory); defaults unless a test needs otherwise."""
    logistic = dict(loss="logistic", l2=1e-3)
    return {
        "logistic-f64": dict(data="bc64.h5", **logistic),
        "logistic-f32": dict(data="bc32.h5", **logistic),
        "logistic-weights": dict(data="bcw.h5", class_weight="balanced", **logistic),
        "logistic-l1": dict(data="bc64.h5", loss="logistic", l1=1e-3),
        "logistic-std-penalty": dict(data="bc64.h5", penalty_scale="standardized", tol=1e-10, rtol=0.0, **logistic),
        "logistic-std-penalty-x1000": dict(data="bc64-x1000.h5", penalty_scale="standardized", tol=1e-10, rtol=0.0,
                                           **logistic),
        "squared-f64": dict(data="db64.h5", loss="squared"),
        "squared-f32": dict(data="db32.h5", loss="squared"),
        "squared-lbfgs": dict(data="db64.h5", loss="squared", solver="iterative"),
        "squared-x1000": dict(data="db64-x1000.h5", loss="squared"),
        "squared-lbfgs-tight": dict(data="db64.h5", loss="squared", solver="iterative", tol=1e-10, rtol=0.0),
        "squared-lbfgs-x1000": dict(data="db64-x1000.h5", loss="squared", solver="iterative", tol=1e-10, rtol=0.0),
        "ridge-weights": dict(data="dbw.h5", loss="squared", l2=0.1),
        "ridge-weights-lbfgs": dict(data="dbw.h5", loss="squared", l2=0.1, solver="iterative"),
        "lasso-cd": dict(data="db64.h5", loss="squared", l1=0.5),
        "lasso-owlqn": dict(data="db64.h5", loss="squared", l1=0.5, solver="iterative"),
        "budget-stop": dict(data="bc64.h5", max_iter=5, **logistic),
        "rtol-stop": dict(data="bc64.h5", rtol=0.05, **logistic),
    }


def main(workdir: str) -> None:
    world = MPI.COMM_WORLD
    results = {}
    for name, options in _configs().items():
        out = os.path.join(workdir, f"model-{name}-{world.Get_size()}.h5")
        values = dict(options, data=os.path.join(workdir, options["data"]), quiet=True, device="cpu", out=out)
        summary = train(train_config(**values), world)
        results[name] = {key: summary[key] for key in ("converged", "optimality", "optimality_target",
                                                        "stop_reason", "optimizer", "solver", "iterations",
                                                        "final_loss", "standardize", "sample_weight")}
        results[name]["out"] = out
    if world.Get_rank() == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
