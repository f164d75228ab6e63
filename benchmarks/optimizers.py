"""Optimizer benchmarks (run under mpirun; rank 0 prints the figures and writes JSON).

``sklearn``: time for pgd ``lbfgs`` to reach the logistic loss that scikit-learn's
``LogisticRegression(solver="lbfgs", penalty=None)`` reaches, next to scikit-learn's own fit time, on the
same data in one run.  scikit-learn fits on rank 0 while the other ranks sleep (they poll a non-blocking
barrier every 10 ms, so they leave the cores to its threads, all cores by default); its loss is
evaluated with pgd's objective, the target pgd must reach.  pgd's time runs from the first gradient to
the first iterate at or below the target (max over ranks); data loading is excluded on both sides.
Skipped when scikit-learn is absent.

``iterations``: iterations (and global evaluations) each optimizer needs to reach a relative
sub-optimality ``(F − F*)/|F*| ≤ 1e-6``, ``F*`` from a tightly converged L-BFGS run, on logistic data
whose column scales span ``--scale`` (an ill-conditioned problem; ``--scale 1`` is isotropic).

``default-lr``: the fraction of the gap ``log 2 − F*`` that adam closes within the default 1000 iterations for
several ``--lr`` values (the choice of ``--lr auto`` = 0.01), and sgd with ``--lr auto``, on raw logistic
data with column scales 0.1–1000 (with and without a column offset by 2000) and on N(0, 1) columns.

Timing rules: warm-up run excluded, median over ``--repeats``.

Examples
--------
mpirun -n 2 python benchmarks/optimizers.py sklearn --n 500000 --d 100
mpirun -n 2 python benchmarks/optimizers.py iterations --n 20000 --d 50
python benchmarks/optimizers.py default-lr
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pgd.cli.options import train_config  # noqa: E402
from pgd.data import generate_dataset  # noqa: E402
from pgd.optim import make_optimizer  # noqa: E402
from pgd.training.setup import bind_backend, build_objective  # noqa: E402


def _dataset(world, args, task: str) -> str:
    path = os.path.join(args.workdir, f"{task}-{args.n}x{args.d}-{args.dtype}.h5")
    if world.Get_rank() == 0 and not os.path.exists(path):
        os.makedirs(args.workdir, exist_ok=True)
        generate_dataset(path, task, args.n, args.d, seed=args.seed, dtype=args.dtype)
    world.Barrier()
    return path


def _objective(world, path: str, loss: str, **options):
    """The objective ``pgd train`` builds (:func:`pgd.training.setup.build_objective`), on the raw columns: these
    measurements compare the optimizers themselves on badly scaled data, so standardisation is off and the
    iterative solver runs."""
    cfg = train_config(data=path, loss=loss, device="cpu", standardize=False, solver="iterative", **options)
    backend, _ = bind_backend(cfg, world)
    objective, slab, _, _ = build_objective(cfg, world, backend)
    return cfg, objective, slab.meta.d


def _run_until(world, objective, cfg, d: int, target: float, max_iter: int, lr: float = 1.0):
    """Seconds (max over ranks), iterations and evaluations until the loss is ``<= target``."""
    world.Barrier()
    started = MPI.Wtime()
    optimizer = make_optimizer(cfg.optimizer, objective, xp=np, lr=lr, cfg=cfg)
    optimizer.budget(max_iter)
    optimizer.start(np.zeros(d + 1))
    iterations = 0
    while optimizer.loss > target and iterations < max_iter and not optimizer.stop_reason:
        optimizer.step()
        iterations += 1
    seconds = world.allreduce(MPI.Wtime() - started, op=MPI.MAX)
    return seconds, iterations, optimizer.evaluations, optimizer.loss


def _no_penalty() -> dict:
    """``penalty=None`` (``C=inf`` from scikit-learn 1.8, which deprecates ``penalty``)."""
    import sklearn  # noqa: PLC0415

    major, minor = (int(part) for part in sklearn.__version__.split(".")[:2])
    return {"C": np.inf} if (major, minor) >= (1, 8) else {"penalty": None}


def _sleep_until_rank0(world) -> None:
    """Wait for rank 0 without spinning on a core."""
    request = world.Ibarrier()
    while not request.Test():
        time.sleep(0.01)


def bench_sklearn(world, args) -> dict:
    rank = world.Get_rank()
    try:
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        if rank == 0:
            print("scikit-learn is not installed: `pip install scikit-learn` to run this benchmark")
        return {"skipped": "scikit-learn not installed"}
    path = _dataset(world, args, "binary")
    cfg, objective, d = _objective(world, path, "logistic", optimizer="lbfgs", memory=args.memory)
    fit_seconds, params = [], np.zeros(d + 1)
    if rank == 0:
        with h5py.File(path, "r") as handle:
            X, y = handle["X"][...], handle["y"][...]
        with threadpool_limits(limits=args.sklearn_threads):  # pgd's ranks run with one BLAS thread each
            for repeat in range(args.repeats + 1):
                model = LogisticRegression(solver="lbfgs", max_iter=args.sklearn_max_iter, tol=args.sklearn_tol,
                                           **_no_penalty())
                started = time.perf_counter()
                model.fit(X, y)
                if repeat:
                    fit_seconds.append(time.perf_counter() - started)
        params = np.append(model.coef_.ravel(), model.intercept_).astype(np.float64)
        sklearn_iterations = int(np.max(model.n_iter_))
        del X, y
        world.Ibarrier().Wait()
    else:
        _sleep_until_rank0(world)
        sklearn_iterations = None
    world.Bcast(params, root=0)
    target = objective.value_and_grad(params, np.empty(d + 1))
    runs = [_run_until(world, objective, cfg, d, target, args.max_iter) for _ in range(args.repeats + 1)][1:]
    seconds = statistics.median(run[0] for run in runs)
    result = {
        "n": args.n, "d": d, "dtype": args.dtype, "ranks": world.Get_size(),
        "sklearn_fit_seconds": statistics.median(fit_seconds) if rank == 0 else None,
        "sklearn_iterations": sklearn_iterations, "sklearn_tol": args.sklearn_tol, "target_loss": target,
        "pgd_lbfgs_seconds": seconds, "pgd_iterations": runs[-1][1], "pgd_evaluations": runs[-1][2],
        "pgd_loss": runs[-1][3], "reached": runs[-1][3] <= target, "repeats": args.repeats,
    }
    if rank == 0:
        print(f"logistic {args.n} x {d} {args.dtype}, {world.Get_size()} ranks: scikit-learn lbfgs (tol "
              f"{args.sklearn_tol:g}) fit {result['sklearn_fit_seconds']:.3f} s ({sklearn_iterations} iterations, "
              f"loss {target:.10g}); "
              f"pgd lbfgs reaches it in {seconds:.3f} s ({result['pgd_iterations']} iterations, "
              f"{result['pgd_evaluations']} evaluations, loss {result['pgd_loss']:.10g}); "
              f"speed-up {result['sklearn_fit_seconds'] / seconds:.2f}x")
    return result


ITERATION_CONFIGS = {
    "gd (lr 1/L)": {"optimizer": "gd"},
    "gd --line-search (from lr 10/L)": {"optimizer": "gd", "line_search": True, "lr_factor": 10.0},
    "momentum 0.9": {"optimizer": "momentum"},
    "nesterov (restart)": {"optimizer": "nesterov"},
    "adam (lr 0.01)": {"optimizer": "adam", "lr": 0.01},
    "lbfgs m=10": {"optimizer": "lbfgs"},
    "sgd batch 1000, inverse-time, lr 1/L (steps)": {"optimizer": "sgd", "batch_size": 1000,
                                                    "schedule": "inverse-time"},
}


def _scaled_dataset(world, args) -> str:
    """Binary data whose column j is scaled by ``scale^(j/(d−1))`` (condition number of XᵀX ≈ scale²)."""
    path = os.path.join(args.workdir, f"scaled{args.scale:g}-{args.n}x{args.d}-{args.dtype}.h5")
    if world.Get_rank() == 0 and not os.path.exists(path):
        os.makedirs(args.workdir, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        scales = args.scale ** (np.arange(args.d) / max(args.d - 1, 1))
        X = rng.standard_normal((args.n, args.d)) * scales
        w = rng.standard_normal(args.d) / np.sqrt(args.d) / scales
        y = (rng.random(args.n) < 1 / (1 + np.exp(-(X @ w + 0.3)))).astype(args.dtype)
        with h5py.File(path, "w") as handle:
            handle.attrs["pgd_format"] = 1
            handle.create_dataset("X", data=X.astype(args.dtype), chunks=(min(args.n, 4096), args.d))
            handle.create_dataset("y", data=y)
    world.Barrier()
    return path


def bench_iterations(world, args) -> dict:
    path = _scaled_dataset(world, args)
    results = {}
    cfg, objective, d = _objective(world, path, "logistic", optimizer="lbfgs", l2=args.l2)
    _, _, _, optimum = _run_until(world, objective, cfg, d, -np.inf, 300)
    lr = 1.0 / objective.lipschitz(30, 0)
    for name, options in ITERATION_CONFIGS.items():
        options = dict(options)
        step = options.pop("lr", None) or lr * options.pop("lr_factor", 1.0)
        cfg_i = cfg.replace(**options)
        target = optimum + 1e-6 * abs(optimum)
        seconds, iterations, evaluations, loss = _run_until(world, objective, cfg_i, d, target, args.max_steps,
                                                            lr=step)
        results[name] = {"iterations": iterations, "evaluations": evaluations, "reached": loss <= target,
                         "seconds": seconds}
        if world.Get_rank() == 0:
            status = "" if loss <= target else f" (not reached: {(loss - optimum) / abs(optimum):.2e})"
            print(f"{name:<46} {iterations:>6} iterations {evaluations:>6} evaluations{status}")
    return {"n": args.n, "d": d, "l2": args.l2, "scale": args.scale, "optimum": optimum, "results": results}


DEFAULT_LR_DATA = {  # name: (rows, columns, seed, column scales 0.1-1000, offset of the last column)
    "2000x6 scales 0.1-1000, offset 2000": (2000, 6, 0, True, 2000.0),
    "20000x12 scales 0.1-1000, offset 2000": (20000, 12, 1, True, 2000.0),
    "5000x8 scales 0.1-1000": (5000, 8, 2, True, 0.0),
    "5000x10 N(0,1)": (5000, 10, 5, False, 0.0),
}


def _raw_dataset(world, args, n: int, d: int, seed: int, scaled: bool, offset: float) -> str:
    """Binary data on raw columns: N(0, 1) scaled by 0.1…1000 (log-spaced), the last one offset."""
    path = os.path.join(args.workdir, f"raw-{n}x{d}-{seed}-{int(scaled)}-{offset:g}.h5")
    if world.Get_rank() == 0 and not os.path.exists(path):
        os.makedirs(args.workdir, exist_ok=True)
        rng = np.random.default_rng(seed)
        Z = rng.standard_normal((n, d))
        y = (Z @ rng.standard_normal(d) + rng.logistic(size=n) > 0).astype(np.float64)
        X = Z * np.logspace(-1, 3, d) if scaled else Z
        X[:, -1] += offset
        with h5py.File(path, "w") as handle:
            handle.attrs["pgd_format"] = 1
            handle.create_dataset("X", data=X)
            handle.create_dataset("y", data=y)
    world.Barrier()
    return path


def bench_default_lr(world, args) -> dict:
    from pgd.training.sync import train  # noqa: PLC0415

    results = {}
    for name, spec in DEFAULT_LR_DATA.items():
        path = _raw_dataset(world, args, *spec)

        def final_loss(**options):
            return train(train_config(data=path, loss="logistic", dtype="float64", quiet=True, **options),
                         world)["final_loss"]

        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            best = final_loss(optimizer="lbfgs", max_iter=2000, tol=1e-10)
            gap = math.log(2.0) - best
            closed = {lr: (math.log(2.0) - final_loss(optimizer="adam", lr=lr)) / gap
                      for lr in (0.001, 0.003, 0.01, 0.03, 0.1, "auto")}
            sgd = final_loss(optimizer="sgd")
        results[name] = {"optimum": best, "adam_gap_closed": closed, "sgd_auto_loss": sgd}
        if world.Get_rank() == 0:
            print(f"{name:<40} F* {best:.4f}  adam gap closed: "
                  + "  ".join(f"{lr}: {value:.2f}" for lr, value in closed.items()) + f"  sgd auto: loss {sgd:.4f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["sklearn", "iterations", "default-lr"])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--scale", type=float, default=10.0, help="iterations: column scale range.")
    parser.add_argument("--memory", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=500)
    parser.add_argument("--max-steps", type=int, default=20000)
    parser.add_argument("--sklearn-max-iter", type=int, default=100)
    parser.add_argument("--sklearn-tol", type=float, default=1e-4)
    parser.add_argument("--sklearn-threads", type=int, default=os.cpu_count(),
                        help="BLAS/OpenMP threads for scikit-learn (all cores by default).")
    parser.add_argument("--workdir", default="bench-data")
    parser.add_argument("--json", default=None, help="Write the result here (rank 0).")
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    bench = {"sklearn": bench_sklearn, "iterations": bench_iterations, "default-lr": bench_default_lr}[args.which]
    result = bench(world, args)
    if world.Get_rank() == 0 and args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
