"""Run under mpirun by tests/test_optimizers_mpi.py: many optimizer configurations in one launch.

Usage: ``mpirun -n N python mpi_optimizers_check.py WORKDIR``; WORKDIR holds reg.h5, bin.h5 and sparse.h5.
Trains every configuration of :data:`CONFIGS` through the Python API (:func:`pgd.training.sync.train`), then runs
L-BFGS step by step and re-checks the strong Wolfe conditions of every accepted step with independent
global evaluations.  Rank 0 prints one line ``RESULT <json>``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pgd.cli.options import train_config  # noqa: E402
from pgd.device.backend import select_backend  # noqa: E402
from pgd.optim import make_optimizer  # noqa: E402
from pgd.strategies import STRATEGIES  # noqa: E402
from pgd.training.sync import train  # noqa: E402

TIGHT = {"tol": 1e-9, "rtol": 0.0, "max_iter": 20000}


def _configs():
    configs = {}
    for loss, data in (("squared", "reg.h5"), ("logistic", "bin.h5")):
        for l2 in (0.0, 0.1):
            key = f"{loss}-l2={l2}"
            configs[f"gd/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="gd", **TIGHT)
            configs[f"gd-ls/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="gd", line_search=True,
                                           lr=20.0, **TIGHT)
            configs[f"momentum/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="momentum", momentum=0.5,
                                              **TIGHT)
            configs[f"nesterov/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="nesterov", **TIGHT)
            configs[f"adam/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="adam", lr=0.02,
                                          **dict(TIGHT, max_iter=4000, tol=1e-7))
            configs[f"lbfgs/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="lbfgs", **TIGHT)
            configs[f"sgd/{key}"] = dict(data=data, loss=loss, l2=l2, optimizer="sgd", batch_size=60,
                                         epochs=60, schedule="inverse-time", seed=7, **TIGHT)
    for l2 in (0.0, 0.1):   # the normal equations (Cholesky), with and without standardisation
        configs[f"gram/l2={l2}"] = dict(data="reg.h5", loss="squared", l2=l2, solver="gram", **TIGHT)
        configs[f"gram-raw/l2={l2}"] = dict(data="reg.h5", loss="squared", l2=l2, solver="gram",
                                            standardize=False, **TIGHT)
    for optimizer in ("gd", "nesterov", "sgd", "lbfgs", "auto"):   # auto: coordinate descent on the Gram
        extra = dict(batch_size=100, epochs=40, schedule="constant", lr=0.1) if optimizer == "sgd" else {}
        configs[f"l1/{optimizer}"] = dict(data="sparse.h5", loss="squared", l1=0.05, optimizer=optimizer,
                                          **dict(TIGHT, **extra))
    for optimizer in ("gd", "nesterov", "lbfgs", "auto"):
        configs[f"enet/{optimizer}"] = dict(data="sparse.h5", loss="squared", l1=0.03, l2=0.05,
                                            optimizer=optimizer, **TIGHT)
    configs["l1-logistic/gd"] = dict(data="bin.h5", loss="logistic", l1=0.02, optimizer="gd", **TIGHT)
    configs["l1-logistic/lbfgs"] = dict(data="bin.h5", loss="logistic", l1=0.02, optimizer="lbfgs", **TIGHT)
    configs["sgd-cosine"] = dict(data="bin.h5", loss="logistic", optimizer="sgd", batch_size=32, epochs=5,
                                 schedule="cosine", lr=0.5, seed=3)
    return configs


def _wolfe_check(world, workdir: str, loss: str, data: str) -> dict:
    """Run L-BFGS step by step; re-evaluate both ends of every accepted step and test strong Wolfe."""
    cfg = train_config(data=os.path.join(workdir, data), loss=loss, optimizer="lbfgs", device="cpu", memory=3)
    backend = select_backend("cpu", 0)
    objective, slab = STRATEGIES["data"](cfg, world, backend)
    optimizer = make_optimizer("lbfgs", objective, xp=backend.xp, lr=1.0, cfg=cfg)
    optimizer.start(np.zeros(slab.meta.d + 1))
    grad0, grad1 = np.empty(slab.meta.d + 1), np.empty(slab.meta.d + 1)
    checked, violations = 0, []
    while optimizer.grad_norm() > 1e-9 and checked < 50:
        before = optimizer.params.copy()
        optimizer.step()
        if optimizer.stop_reason:
            break
        alpha = optimizer.wolfe_log[-1][0]
        direction = (optimizer.params - before) / alpha
        f0 = objective.value_and_grad(before, grad0)
        f1 = objective.value_and_grad(optimizer.params, grad1)
        slope0, slope1 = objective.dot(grad0, direction), objective.dot(grad1, direction)
        armijo = f1 <= f0 + optimizer.c1 * alpha * slope0 + 1e-13 * abs(f0)
        curvature = abs(slope1) <= optimizer.c2 * abs(slope0) * (1 + 1e-9)
        checked += 1
        if not (armijo and curvature and slope0 < 0):
            violations.append([checked, f0, f1, slope0, slope1, alpha])
    return {"checked": checked, "violations": violations, "grad_norm": optimizer.grad_norm()}


def main(workdir: str) -> None:
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    results = {}
    for name, values in _configs().items():
        values = dict(values, data=os.path.join(workdir, values["data"]), quiet=True, device="cpu",
                      out=os.path.join(workdir, f"model-{world.Get_size()}.h5"))
        summary = train(train_config(**values), world)
        if rank == 0:
            with h5py.File(values["out"], "r") as handle:
                weights = handle["w"][...].tolist() + [float(handle["b"][()])]
            results[name] = {"params": weights, "loss": summary["final_loss"],
                             "iterations": summary["iterations"], "converged": summary["converged"],
                             "solver": summary["solver"], "epochs": summary.get("epochs"),
                             "optimizer": summary["optimizer"], "identical": summary["replicas_identical"]}
        world.Barrier()
    results["wolfe"] = {loss: _wolfe_check(world, workdir, loss, data)
                        for loss, data in (("logistic", "bin.h5"), ("squared", "reg.h5"))}
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
