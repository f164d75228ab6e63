"""Run under mpirun by tests/spmd/test_sparse_train.py: training on sparse (CSR) files, in one launch.

Usage: ``mpirun -n N python mpi_sparse_train_check.py WORKDIR``; WORKDIR holds the datasets the test wrote.
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

TIGHT = dict(tol=1e-10, rtol=0.0)


def _configs() -> dict:
    """name -> options (``data`` relative to the work directory)."""
    logistic = dict(loss="logistic", l2=1e-2, **TIGHT)
    return {
        "logistic-csr": dict(data="bin-csr.h5", **logistic),
        "logistic-dense": dict(data="bin-dense.h5", **logistic),
        "logistic-csr-fused": dict(data="bin-csr.h5", env={"PGD_CPU_KERNEL": "fused"}, **logistic),
        "ridge-csr-lbfgs-fused": dict(data="reg-csr.h5", loss="squared", l2=1e-2, solver="iterative",
                                      env={"PGD_CPU_KERNEL": "fused"}, **TIGHT),
        "logistic-csr-int64": dict(data="bin-csr64.h5", **logistic),
        "logistic-csr-f32": dict(data="bin-csr32.h5", loss="logistic", l2=1e-2),
        "logistic-csr-as-f32": dict(data="bin-csr.h5", dtype="float32", loss="logistic", l2=1e-2),
        "logistic-csr-weights": dict(data="binw-csr.h5", class_weight="balanced", **logistic),
        "logistic-heavy-row": dict(data="heavy-csr.h5", **logistic),
        "logistic-csr-nostd": dict(data="bin-csr.h5", standardize=False, **logistic),
        "logistic-csr-noint": dict(data="bin-csr.h5", fit_intercept=False, **logistic),
        "logistic-csr-gd": dict(data="bin-csr.h5", optimizer="gd", loss="logistic", l2=1e-2, max_iter=5000),
        "logistic-csr-nesterov": dict(data="bin-csr.h5", optimizer="nesterov", loss="logistic", l2=1e-2),
        "logistic-csr-adam": dict(data="bin-csr.h5", optimizer="adam", loss="logistic", l2=1e-2, max_iter=5000),
        "logistic-csr-sgd": dict(data="bin-csr.h5", optimizer="sgd", loss="logistic", l2=1e-2, batch_size=32,
                                 epochs=30),
        "logistic-dense-sgd": dict(data="bin-dense.h5", optimizer="sgd", loss="logistic", l2=1e-2, batch_size=32,
                                   epochs=30),
        "logistic-csr-l1": dict(data="bin-csr.h5", loss="logistic", l1=1e-2, **TIGHT),
        "logistic-dense-l1": dict(data="bin-dense.h5", loss="logistic", l1=1e-2, **TIGHT),
        "ridge-csr": dict(data="reg-csr.h5", loss="squared", l2=1e-2),
        "ridge-dense": dict(data="reg-dense.h5", loss="squared", l2=1e-2),
        "ridge-csr-lbfgs": dict(data="reg-csr.h5", loss="squared", l2=1e-2, solver="iterative", **TIGHT),
        "ols-csr": dict(data="reg-csr.h5", loss="squared"),
        "ols-csr-offset": dict(data="reg-offset-csr.h5", loss="squared", **TIGHT),
        "ols-csr-weights": dict(data="regw-csr.h5", loss="squared"),
    }


def _multi_rank_configs() -> dict:
    """Modes with loops of their own (they need two ranks or more)."""
    sgd = dict(loss="logistic", l2=1e-2, optimizer="sgd", batch_size=16)
    return {
        "logistic-csr-async": dict(data="bin-csr.h5", mode="async", updates=400, **sgd),
        "logistic-csr-shm": dict(data="bin-csr.h5", mode="shm", updates=400, **sgd),
        "logistic-csr-local-sgd": dict(data="bin-csr.h5", sync_every=4, epochs=10, **sgd),
        "logistic-dense-local-sgd": dict(data="bin-dense.h5", sync_every=4, epochs=10, **sgd),
    }


def main(workdir: str) -> None:
    world = MPI.COMM_WORLD
    results = {}
    configs = {**_configs(), **(_multi_rank_configs() if world.Get_size() > 1 else {})}
    for name, options in configs.items():
        out = os.path.join(workdir, f"model-{name}-{world.Get_size()}.h5")
        env = options.pop("env", {})
        os.environ.update(env)
        values = dict(options, data=os.path.join(workdir, options["data"]), quiet=True, device="cpu", out=out)
        summary = train(train_config(**values), world)
        for variable in env:
            del os.environ[variable]
        results[name] = {key: summary.get(key) for key in (
            "converged", "optimizer", "solver", "iterations", "final_loss", "standardize", "sample_weight",
            "gradient_kernel")}
        results[name]["out"] = out
    if world.Get_rank() == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
