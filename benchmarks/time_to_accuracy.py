"""Time to the optimum: ``pgd train`` with default options against scikit-learn, whole process and fit only.

For every problem the float64 optimum ``F*`` of pgd's objective ``(1/n) Σ loss_i + (λ/2)‖w‖²`` is computed
first (Newton's method / least squares); each tool's model is then scored by its relative gap
``(F − F*)/F*`` in float64 on the same data.  Tools:

- pgd: ``mpirun -n R pgd train DATA --loss L [--l2 λ] --out M --quiet`` (defaults only); *fit* is the run's
  own wall time (loading excluded, from the model file), *process* the whole command (MPI start, imports,
  loading, writing the model);
- scikit-learn with its defaults (``LogisticRegression(C=1/(nλ))`` lbfgs, ``LinearRegression``) and tuned to
  reach the same accuracy (``solver="newton-cholesky", tol=1e-10``), each in a fresh ``python`` process
  that reads the same HDF5 file (*process*) and times ``fit`` alone (*fit*);
- Spark MLlib when ``pyspark`` is installed (not on the machine the README's table comes from).

Problems: scikit-learn's breast cancer (569 × 30, logistic, raw features over four orders of magnitude)
and diabetes (442 × 10, squared, unscaled), and synthetic ``--n × --d`` float32 logistic and regression data
whose column scales span 10⁻² … 10² (``pgd data generate`` columns times ``10^U(-2, 2)``).

Usage: ``python benchmarks/time_to_accuracy.py [--ranks 2] [--n 500000] [--d 100] [--out DIR]``; prints a
Markdown table and writes ``DIR/time_to_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SKLEARN_FIT = r"""
import json, sys, time, h5py, numpy as np, warnings
warnings.simplefilter("ignore")
from sklearn.linear_model import LinearRegression, LogisticRegression
path, loss, l2, setting, out = sys.argv[1:6]
with h5py.File(path) as f:
    X, y = f["X"][...], f["y"][...]
n = len(y)
if loss == "squared":
    model = LinearRegression()
elif setting == "default":
    model = LogisticRegression(C=1 / (n * float(l2)))
else:
    model = LogisticRegression(C=1 / (n * float(l2)), solver="newton-cholesky", tol=1e-10, max_iter=1000)
started = time.perf_counter()
model.fit(X, y)
fit = time.perf_counter() - started
json.dump({"w": np.ravel(model.coef_).tolist(), "b": float(np.ravel(model.intercept_)[0]), "fit": fit},
          open(out, "w"))
"""


def _pgd_fit_seconds(timing: dict) -> float:
    """pgd's fit: the loop plus the set-up after reading (standardisation, Gram reduction, step size); the set-up
    also counts the read of the slab, which scikit-learn's fit does not, so this errs against pgd."""
    return timing["wall"] + timing.get("setup", 0.0)


def _write(path: str, X, y, dtype) -> str:
    with h5py.File(path, "w") as handle:
        handle.attrs["pgd_format"] = 1
        handle.create_dataset("X", data=X.astype(dtype), chunks=(min(len(X), 4096), X.shape[1]))
        handle.create_dataset("y", data=y.astype(dtype))
    return path


def problems(workdir: str, n: int, d: int) -> list[dict]:
    """The data sets (written once into ``workdir``) and their objectives."""
    from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: PLC0415

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-2, 2, d)
    w = rng.standard_normal(d) / np.sqrt(d) / (X.std(axis=0))
    z = X @ w + 0.3
    cases = [
        ("breast cancer (real)", *load_breast_cancer(return_X_y=True), "logistic", 1e-3, np.float64),
        ("diabetes (real)", *load_diabetes(return_X_y=True, scaled=False), "squared", 0.0, np.float64),
        (f"synthetic {n} x {d}, scales 1e-2..1e2", X, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float),
         "logistic", 1e-4, np.float32),
        (f"synthetic {n} x {d}, scales 1e-2..1e2", X, z + rng.standard_normal(n), "squared", 0.0, np.float32),
    ]
    out = []
    for index, (name, X_, y_, loss, l2, dtype) in enumerate(cases):
        path = os.path.join(workdir, f"problem{index}-{n}x{d}.h5")
        if not os.path.exists(path):
            _write(path, X_, y_, dtype)
        out.append({"name": name, "path": path, "loss": loss, "l2": l2, "dtype": np.dtype(dtype).name})
    return out


def objective(X, y, loss: str, l2: float, w, b) -> float:
    z = X @ w + b
    value = np.mean(0.5 * (z - y) ** 2) if loss == "squared" else np.mean(np.logaddexp(0, z) - y * z)
    return float(value + 0.5 * l2 * w @ w)


def optimum(X, y, loss: str, l2: float) -> float:
    """F* in float64: least squares, or Newton's method with the exact Hessian."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    if loss == "squared":
        p = np.linalg.lstsq(A, y, rcond=None)[0]
        return objective(X, y, loss, l2, p[:-1], p[-1])
    p = np.zeros(d + 1)
    penalty = np.diag([l2] * d + [0.0])
    for _ in range(100):
        q = 1 / (1 + np.exp(-(A @ p)))
        g = A.T @ (q - y) / n + penalty @ p
        p -= np.linalg.solve((A * (q * (1 - q))[:, None]).T @ A / n + penalty, g)
        if np.abs(g).max() < 1e-13:
            break
    return objective(X, y, loss, l2, p[:-1], p[-1])


def run_pgd(problem: dict, ranks: int, workdir: str) -> dict:
    model = os.path.join(workdir, "pgd-model.h5")
    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    command = [mpirun, *root, "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "pgd", "train",
               problem["path"], "--loss", problem["loss"], "--out", model, "--quiet"]
    if problem["l2"]:
        command += ["--l2", repr(problem["l2"])]
    env = dict(os.environ, PGD_BLAS_THREADS="1", OMPI_MCA_btl=os.environ.get("OMPI_MCA_btl", "^ofi"))
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    process = time.perf_counter() - started
    with h5py.File(model) as handle:
        attrs = dict(handle.attrs)
        w, b = handle["w"][...], float(handle["b"][()])
    setting = f"defaults ({attrs['optimizer']}, {attrs['iterations']} iterations), {ranks} ranks"
    return {"tool": "pgd", "setting": setting, "w": w, "b": b, "process": process,
            "fit": _pgd_fit_seconds(json.loads(attrs["timing"])), "converged": bool(attrs["converged"])}


def run_sklearn(problem: dict, setting: str, workdir: str) -> dict:
    out = os.path.join(workdir, "sklearn.json")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", SKLEARN_FIT, problem["path"], problem["loss"], repr(problem["l2"]),
                    setting, out], check=True, capture_output=True)
    process = time.perf_counter() - started
    result = json.load(open(out))
    import sklearn  # noqa: PLC0415

    name = "LinearRegression" if problem["loss"] == "squared" else (
        "LogisticRegression (lbfgs, defaults)" if setting == "default"
        else "LogisticRegression (newton-cholesky, tol 1e-10)")
    return {"tool": f"scikit-learn {sklearn.__version__}", "setting": name, "w": np.array(result["w"]),
            "b": result["b"], "process": process, "fit": result["fit"], "converged": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--out", default="bench-results/time-to-accuracy")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for problem in problems(args.out, args.n, args.d):
        with h5py.File(problem["path"]) as handle:
            X, y = handle["X"][...].astype(np.float64), handle["y"][...].astype(np.float64)
        best = optimum(X, y, problem["loss"], problem["l2"])
        settings = ["default"] if problem["loss"] == "squared" else ["default", "tuned"]
        for result in [run_pgd(problem, args.ranks, args.out)] + [run_sklearn(problem, s, args.out)
                                                                 for s in settings]:
            value = objective(X, y, problem["loss"], problem["l2"], result.pop("w"), result.pop("b"))
            rows.append(dict(result, problem=problem["name"], loss=problem["loss"], dtype=problem["dtype"],
                             gap=(value - best) / abs(best)))
    print("| problem | loss | tool | setting | relative gap | process s | fit s |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['problem']} ({row['dtype']}) | {row['loss']} | {row['tool']} | {row['setting']} | "
              f"{row['gap']:.1e} | {row['process']:.2f} | {row['fit']:.3f} |")
    with open(os.path.join(args.out, "time_to_accuracy.json"), "w") as handle:
        json.dump(rows, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
