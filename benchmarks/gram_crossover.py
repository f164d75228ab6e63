"""Where the Gram solver beats iterating: ``--solver gram`` against ``--solver iterative`` (lbfgs) by d.

For each ``d`` a float32 regression problem of about ``--mbytes`` MB (``n = mbytes·2¹⁸/d`` rows) is trained
both ways with default options otherwise, one rank, in this process (``pgd.training.sync.train``); the table gives
each whole ``train`` call's wall time (both include the same loading and standardisation pass; the Gram
route's reduction happens before its loop, so the run summary's loop time would hide it) and the ratio.
Two designs: isotropic
N(0, 1) columns (L-BFGS needs a handful of iterations: the worst case for the Gram route) and correlated
columns whose standardised covariance has condition number ``--condition`` (closer to real data).  The
crossover is the ``d`` where the ratio passes 1; :data:`pgd.strategies.gram.AUTO_MAX_COLUMNS` is set from it.

Usage: ``python benchmarks/gram_crossover.py [--d 16,64,256,1024,2048,4096] [--mbytes 200]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("PGD_BLAS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from pgd.cli.options import train_config  # noqa: E402
from pgd.training.sync import train  # noqa: E402


def _problem(path: str, n: int, d: int, condition: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        handle.attrs["pgd_format"] = 1
        X = handle.create_dataset("X", shape=(n, d), dtype=np.float32, chunks=(min(n, 4096), d))
        y = handle.create_dataset("y", shape=(n,), dtype=np.float32)
        mixing = None
        if condition > 1:
            basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
            mixing = (basis * np.sqrt(np.logspace(0, -np.log10(condition), d))) @ basis.T
        true = rng.standard_normal(d) / np.sqrt(d)
        for start in range(0, n, 65536):
            rows = min(65536, n - start)
            block = rng.standard_normal((rows, d))
            if mixing is not None:
                block = block @ mixing
            X[start:start + rows] = block
            y[start:start + rows] = block @ true + 0.5 + 0.1 * rng.standard_normal(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", default="16,64,256,1024,2048,4096")
    parser.add_argument("--mbytes", type=float, default=200.0)
    parser.add_argument("--condition", type=float, default=1e4)
    args = parser.parse_args()
    print("| design | d | n | gram s | lbfgs s (iterations) | gram / lbfgs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as workdir:
        for condition, design in ((1.0, "isotropic"), (args.condition, f"correlated, cond {args.condition:g}")):
            for d in (int(v) for v in args.d.split(",")):
                n = max(4 * d, int(args.mbytes * (1 << 18) / d))
                path = os.path.join(workdir, f"p{d}.h5")
                _problem(path, n, d, condition)
                seconds, iterations = {}, {}
                for solver in ("gram", "iterative"):
                    started = time.perf_counter()
                    summary = train(train_config(data=path, loss="squared", solver=solver, quiet=True))
                    seconds[solver] = time.perf_counter() - started
                    iterations[solver] = summary["iterations"]
                print(f"| {design} | {d} | {n} | {seconds['gram']:.3f} | {seconds['iterative']:.3f} "
                      f"({iterations['iterative']}) | {seconds['gram'] / seconds['iterative']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
