"""Training on sparse (CSR) data: pgd's per-iteration cost against one SciPy mat-vec, and time to the same
objective against scikit-learn (lbfgs, saga) and LIBLINEAR (``-s 0``), whole process and fit only.

Subcommands:

    python benchmarks/sparse_train.py make data.h5 --n 500000 --d 1000000 --nnz 50
    python benchmarks/sparse_train.py periter data.h5 [--repeats 20] [--threads 1]
    python benchmarks/sparse_train.py compare data.h5 --l2 1e-5 [--eps 1e-6] [--tools pgd,pgd-2ranks,...]
    python benchmarks/sparse_train.py peer TOOL data.h5 --l2 1e-5 --tol T      (one fit; used by compare)

The objective is L2-regularised logistic regression without intercept (LIBLINEAR's ``-s 0`` has none
unpenalised), ``f(w) = (1/n) Σ log(1 + exp(-ỹ x·w)) + (λ/2)‖w‖²`` with ``ỹ = ±1``: scikit-learn's
``C = 1/(λ n)``, LIBLINEAR's ``-c`` the same. ``compare`` takes as reference ``f*`` the lowest objective
of two tight runs (pgd at tol 1e-10, LIBLINEAR at -e 1e-9) and of every run after them; then, for each
tool, it runs a ladder of tolerances from loose to tight (each fit its own process) and stops at the first
run with ``(f − f*)/f* <= eps``, reporting its process wall time (start to exit: imports, reading the
data, the fit), the fit alone, and the process's peak RSS. pgd's "fit" is its set-up (which includes
reading its CSR slab) plus its loop, from the model file's timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "^ofi"]

#: Tolerance ladders, loose to tight (each tool's own meaning of "tol").
LADDERS = {
    "pgd": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9],
    "pgd-2ranks": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9],
    "sklearn-lbfgs": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10],
    "sklearn-saga": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
    "liblinear": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
}
#: Tight runs whose lowest objective is the reference f* (a ladder stops at its first run within eps of it).
REFERENCE_RUNS = [("pgd", 1e-10), ("liblinear", 1e-9)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_csr(path: str):
    """The whole file as a SciPy CSR matrix (float64) and labels in {0, 1}, as a peer would read it."""
    import h5py
    import scipy.sparse

    with h5py.File(path, "r") as handle:
        group = handle["X"]
        shape = tuple(int(s) for s in group.attrs["shape"])
        X = scipy.sparse.csr_matrix((group["data"][...].astype(np.float64), group["indices"][...],
                                     group["indptr"][...]), shape=shape)
        y = handle["y"][...].astype(np.float64)
    return X, y


def objective(X, y, w, l2: float) -> float:
    """``(1/n) Σ log(1 + exp(-ỹ z)) + (λ/2)‖w‖²`` in float64."""
    margin = (2 * y - 1) * (X @ w)
    return float(np.mean(np.logaddexp(0, -margin)) + 0.5 * l2 * w @ w)


def cmd_make(args) -> None:
    from pgd.data.sparse_generate import generate_sparse

    started = time.perf_counter()
    summary = generate_sparse(args.path, args.n, args.d, args.nnz, task="binary", seed=args.seed, power=args.power,
                              dtype="float64")
    print(json.dumps({"kind": "make", "seconds": round(time.perf_counter() - started, 2), "n": summary["n"],
                      "d": summary["d"], "nnz": summary["nnz"], "mb": round(os.path.getsize(args.path) / 1e6, 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def _median_seconds(work, repeats: int) -> float:
    work()   # warm: first touch, kernel load
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples))


def cmd_periter(args) -> None:
    """Median seconds of one SciPy CSR mat-vec, and of pgd's local loss + gradient (compiled one-pass kernel
    and SciPy's two calls) over the same matrix, in this one process."""
    os.environ["PGD_CPU_KERNEL"] = "fused"
    from scipy.sparse import _sparsetools

    from pgd.data.csr import inspect_csr
    from pgd.data.csr_slab import read_csr_slab
    from pgd.local.losses import get_loss
    from pgd.local.sparse import SparseLinearGradient
    from pgd.runtime import launcher

    launcher.BLAS_THREADS_RESOLVED = str(args.threads)
    meta = inspect_csr(args.path)
    slab = read_csr_slab(meta, 0, meta.n, np.float64)
    X, y = slab.to_scipy(), slab.y
    n, d = X.shape
    w = np.random.default_rng(0).standard_normal(d) / np.sqrt(50)
    params = np.append(w, 0.0)
    z = np.empty(n)

    def matvec():
        z[...] = 0
        _sparsetools.csr_matvec(n, d, X.indptr, X.indices, X.data, w, z)

    out = np.empty(d + 2)
    loss = get_loss("logistic")
    fused = SparseLinearGradient(X, y, loss, fit_intercept=True)
    two_calls = SparseLinearGradient(X, y, loss, fit_intercept=True, compiled=False)
    rows = {"scipy_matvec": _median_seconds(matvec, args.repeats),
            "scipy_matmul_operator": _median_seconds(lambda: X @ w, args.repeats),
            "pgd_fused": _median_seconds(lambda: fused.sums_at(params, out), args.repeats),
            "pgd_scipy_two_calls": _median_seconds(lambda: two_calls.sums_at(params, out), args.repeats)}
    floor = rows["scipy_matvec"]
    print(json.dumps({"kind": "periter", "n": n, "d": d, "nnz": int(X.nnz), "threads": args.threads,
                      "kernel": fused.kernel, "seconds": {k: round(v, 5) for k, v in rows.items()},
                      "ratio_to_matvec": {k: round(v / floor, 3) for k, v in rows.items()},
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def _fit_sklearn(X, y, l2: float, tol: float, solver: str):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0 / (l2 * X.shape[0]), solver=solver, tol=tol, max_iter=100_000,
                               fit_intercept=False)
    model.fit(X, y)
    return model.coef_[0], int(np.max(model.n_iter_))


def _fit_liblinear(X, y, l2: float, tol: float):
    from liblinear.liblinearutil import parameter, problem, train

    prob = problem(2 * y - 1, X)
    model = train(prob, parameter(f"-s 0 -c {1.0 / (l2 * X.shape[0])!r} -e {tol!r} -q"))
    w = np.array(model.get_decfun()[0])
    return (w if model.get_labels()[0] == 1 else -w), -1


def cmd_peer(args) -> None:
    """One fit of a peer tool in this process (``compare`` times the process from outside)."""
    started = time.perf_counter()
    X, y = load_csr(args.path)
    loaded = time.perf_counter()
    if args.tool == "liblinear":
        w, iterations = _fit_liblinear(X, y, args.l2, args.tol)
    else:
        w, iterations = _fit_sklearn(X, y, args.l2, args.tol, args.tool.split("-")[1])
    fitted = time.perf_counter()
    print(json.dumps({"tool": args.tool, "tol": args.tol, "load_seconds": round(loaded - started, 3),
                      "fit_seconds": round(fitted - loaded, 3), "iterations": iterations,
                      "objective": objective(X, y, w, args.l2), "peak_rss_mb": round(peak_rss_mb(), 1)}))


def _run_pgd(path: str, l2: float, tol: float, ranks: int, threads: int, model: str) -> dict:
    command = [sys.executable, "-m", "pgd", "train", path, "--loss", "logistic", "--l2", repr(l2),
               "--no-fit-intercept", "--tol", repr(tol), "--rtol", "0", "--max-iter", "100000", "--quiet",
               "--dtype", "float64", "--out", model]
    if ranks > 1:
        command = MPIRUN + ["-n", str(ranks)] + command
    env = dict(os.environ, PGD_BLAS_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    import h5py

    with h5py.File(model, "r") as handle:
        timing = json.loads(handle.attrs["timing"])
        w = handle["w"][...]
        facts = {"iterations": int(handle.attrs["iterations"]), "peak_rss_mb": handle.attrs["peak_rss_bytes"] / 2**20,
                 "kernel": str(handle.attrs["gradient_kernel"])}
    return {"process_seconds": wall, "fit_seconds": timing["setup"] + timing["wall"], "w": w, **facts}


def _one_run(tool: str, args, tol: float, X, y) -> dict:
    if tool.startswith("pgd"):
        ranks = 2 if tool == "pgd-2ranks" else 1
        result = _run_pgd(args.path, args.l2, tol, ranks, args.threads if ranks == 1 else 1,
                          os.path.join(args.workdir, f"model-{tool}.h5"))
        result["objective"] = objective(X, y, result.pop("w"), args.l2)
        return result
    command = [sys.executable, os.path.abspath(__file__), "peer", tool, args.path, "--l2", repr(args.l2),
               "--tol", repr(tol)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1",
                                                                            OPENBLAS_NUM_THREADS="1"),
                          timeout=args.timeout)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"process_seconds": wall, **result}


def cmd_compare(args) -> None:
    os.makedirs(args.workdir, exist_ok=True)
    X, y = load_csr(args.path)
    runs = {"reference": []}
    for tool, tol in REFERENCE_RUNS:     # f*: the lowest objective of tight runs (and of every run below)
        run = _one_run(tool, args, tol, X, y)
        runs["reference"].append({"tool": tool, "tol": tol, **run})
        print(json.dumps({"reference": tool, "tol": tol, "objective": run["objective"]}), file=sys.stderr, flush=True)
    best = min(run["objective"] for run in runs["reference"])
    for tool in args.tools.split(","):
        runs[tool] = []
        for tol in LADDERS[tool]:
            try:
                run = _one_run(tool, args, tol, X, y)
            except subprocess.TimeoutExpired:
                runs[tool].append({"tol": tol, "timeout": args.timeout})
                break
            run["tol"] = tol
            runs[tool].append(run)
            print(json.dumps({"tool": tool, **run}), file=sys.stderr, flush=True)
            best = min(best, run["objective"])
            if (run["objective"] - best) / best <= args.eps or run["process_seconds"] > args.timeout:
                break
    table = []
    for tool in args.tools.split(","):
        reached = [run for run in runs[tool] if "objective" in run and (run["objective"] - best) / best <= args.eps]
        first = reached[0] if reached else None
        table.append({"tool": tool, "reached": first is not None,
                      "tol": first["tol"] if first else None,
                      "process_seconds": round(first["process_seconds"], 2) if first else None,
                      "fit_seconds": round(first["fit_seconds"], 2) if first else None,
                      "gap": ((first["objective"] - best) / best) if first else None,
                      "peak_rss_mb": round(first["peak_rss_mb"], 1) if first else None,
                      "iterations": first.get("iterations") if first else None})
    result = {"kind": "compare", "path": args.path, "n": X.shape[0], "d": X.shape[1], "nnz": int(X.nnz),
              "l2": args.l2, "eps": args.eps, "best_objective": best, "table": table, "runs": runs}
    with open(os.path.join(args.workdir, "compare.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1, default=float)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make")
    make.add_argument("path")
    make.add_argument("--n", type=int, default=500_000)
    make.add_argument("--d", type=int, default=1_000_000)
    make.add_argument("--nnz", type=int, default=50)
    make.add_argument("--power", type=float, default=1.0)
    make.add_argument("--seed", type=int, default=0)
    periter = sub.add_parser("periter")
    periter.add_argument("path")
    periter.add_argument("--repeats", type=int, default=20)
    periter.add_argument("--threads", type=int, default=1)
    compare = sub.add_parser("compare")
    compare.add_argument("path")
    compare.add_argument("--l2", type=float, default=1e-5)
    compare.add_argument("--eps", type=float, default=1e-6)
    compare.add_argument("--tools", default="pgd,pgd-2ranks,sklearn-lbfgs,sklearn-saga,liblinear")
    compare.add_argument("--threads", type=int, default=1, help="pgd on one rank: kernel threads.")
    compare.add_argument("--timeout", type=float, default=600.0, help="Stop a tool's ladder after a run this long.")
    compare.add_argument("--workdir", default="/tmp/pgd-sparse-train")
    peer = sub.add_parser("peer")
    peer.add_argument("tool", choices=["sklearn-lbfgs", "sklearn-saga", "liblinear"])
    peer.add_argument("path")
    peer.add_argument("--l2", type=float, required=True)
    peer.add_argument("--tol", type=float, required=True)
    args = parser.parse_args()
    {"make": cmd_make, "periter": cmd_periter, "compare": cmd_compare, "peer": cmd_peer}[args.command](args)


if __name__ == "__main__":
    main()
