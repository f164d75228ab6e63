"""Run under mpirun by tests/spmd/test_validation.py: runs with validation, in one launch.

Usage: ``mpirun -n N python mpi_validation_check.py WORKDIR``; WORKDIR holds the datasets the test wrote.
Writes ``model-<name>-<N>.h5`` and ``metrics-<name>-<N>.jsonl``; rank 0 prints ``RESULT <json>``.
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
    return {
        # held-out rows, validated every iteration, stopped 3 validations after the best
        "logistic-early": dict(data="bc.h5", loss="logistic", l2=1e-6, validation_fraction=0.3, seed=5,
                               validate_every=1, early_stopping=3),
        # held-out rows, no early stopping: the run is the run on the training rows alone
        "logistic-holdout": dict(data="bc.h5", loss="logistic", l2=1e-3, validation_fraction=0.3, seed=5,
                                 validate_every=7, tol=1e-9, rtol=0.0),
        "logistic-train-only": dict(data="bc-train.h5", loss="logistic", l2=1e-3, tol=1e-9, rtol=0.0),
        # a validation file, multinomial, mini-batch SGD validated at epoch ends
        "multinomial-file": dict(data="digits-a.h5", loss="multinomial", l2=1e-3, validation="digits-b.h5",
                                 validate_every=5, early_stopping=4),
        "multinomial-sgd": dict(data="digits-a.h5", loss="multinomial", l2=1e-3, validation="digits-b.h5",
                                optimizer="sgd", epochs=6, batch_size=128, lr=0.05, validate_every=1),
        "squared-weights": dict(data="db.h5", loss="squared", solver="iterative", validation_fraction=0.5,
                                validate_every=3),
    }


def main(workdir: str) -> None:
    world = MPI.COMM_WORLD
    results = {}
    for name, options in _configs().items():
        out = os.path.join(workdir, f"model-{name}-{world.Get_size()}.h5")
        metrics = os.path.join(workdir, f"metrics-{name}-{world.Get_size()}.jsonl")
        values = dict(options, data=os.path.join(workdir, options["data"]), quiet=True, device="cpu", out=out,
                      metrics=metrics)
        if "validation" in options:
            values["validation"] = os.path.join(workdir, options["validation"])
        summary = train(train_config(**values), world)
        results[name] = {key: summary.get(key) for key in ("n", "iterations", "stop_reason", "best_iteration",
                                                           "validation_metrics", "validation_rows", "converged")}
        results[name].update(out=out, metrics=metrics)
    if world.Get_rank() == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
