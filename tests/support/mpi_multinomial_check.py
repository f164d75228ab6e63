"""Run under mpirun by tests/spmd/test_multinomial_mpi.py: multinomial runs on real data, in one launch.

Usage: ``mpirun -n N python mpi_multinomial_check.py WORKDIR``; WORKDIR holds the datasets the test wrote.
Trains every configuration of :func:`_configs` through the Python API and writes ``model-<name>-<N>.h5``;
rank 0 prints one line ``RESULT <json>`` with each run's summary facts.
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

L2 = 1e-3


def _configs() -> dict:
    """name -> options (``data`` relative to the work directory); defaults unless a test needs otherwise."""
    multinomial = dict(loss="multinomial", l2=L2)
    return {
        # digits at the default --tol 1e-6 ends 0.5e-6 .. 1.4e-6 (relative) above the optimum: the tests ask 1e-6
        "digits-f64": dict(data="digits64.h5", tol=1e-7, **multinomial),
        "digits-f32": dict(data="digits32.h5", tol=1e-7, **multinomial),
        "digits-weights": dict(data="digitsw.h5", class_weight="balanced", tol=1e-7, **multinomial),
        "digits-tight": dict(data="digits64.h5", tol=1e-9, rtol=0.0, max_iter=5000, **multinomial),
        "iris-f64": dict(data="iris64.h5", **multinomial),
        "iris-f32": dict(data="iris32.h5", **multinomial),
        "iris-weights": dict(data="irisw.h5", **multinomial),
        "iris-no-intercept": dict(data="iris64.h5", fit_intercept=False, **multinomial),
        "iris-no-standardize": dict(data="iris64.h5", standardize=False, **multinomial),
        "iris-l1": dict(data="iris64.h5", loss="multinomial", l1=1e-2, tol=1e-9, rtol=0.0),
        "iris-sgd": dict(data="iris64.h5", optimizer="sgd", epochs=200, batch_size=16, lr=0.5, **multinomial),
    }


def main(workdir: str) -> None:
    world = MPI.COMM_WORLD
    results = {}
    for name, options in _configs().items():
        out = os.path.join(workdir, f"model-{name}-{world.Get_size()}.h5")
        values = dict(options, data=os.path.join(workdir, options["data"]), quiet=True, device="cpu", out=out)
        summary = train(train_config(**values), world)
        results[name] = {key: summary.get(key) for key in ("converged", "optimality", "optimality_target",
                                                           "stop_reason", "optimizer", "iterations", "final_loss",
                                                           "standardize", "sample_weight", "n_classes",
                                                           "classes", "replicas_identical")}
        results[name]["out"] = out
    if world.Get_rank() == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
