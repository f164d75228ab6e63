"""Benchmark of the compiled CPU kernels (:mod:`pgd.local.cpu_kernels`) against their floors.

``python -m pgd.bench.cpu_kernels`` measures, in one process and one run:

- dense: per evaluation (loss + gradient sums over all rows), the fused kernel (both precisions for
  float32) and today's blocked BLAS path (:class:`pgd.local.linear.LocalLinearGradient`), each against the floor,
  one GEMV ``X @ w`` over the same rows; for ``k`` threads, against a ``k``-thread GEMV;
- CSR: the fused kernel and SciPy's two calls (``X @ w``, the loss, ``X.T @ r``) against one SciPy CSR
  mat-vec over the same matrix (SciPy's CSR products are single-threaded: the floor stays one thread);
- start-up: compiling the kernels into an empty disk cache, and loading them from it (fresh processes).

Every candidate is warmed, the candidates are run interleaved (one of each per round, the order rotated),
and the medians over the rounds are reported (and the minima, since the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from pgd.bench.timing import interleaved_samples
from pgd.fileio import atomic_path
from pgd.local import cpu_kernels as K
from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss


def _blas_threads(threads: int):
    """A context limiting the BLAS to ``threads`` threads (threadpoolctl), or a no-op without it."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional
    except ImportError:  # pragma: no cover
        import contextlib  # noqa: PLC0415
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def interleaved(candidates: dict, rounds: int) -> dict:
    """Median and minimum seconds of every candidate over ``rounds`` interleaved rounds
    (:func:`pgd.bench.timing.interleaved_samples`)."""
    samples = interleaved_samples(candidates, rounds)
    return {name: {"median": float(np.median(s)), "min": float(np.min(s))} for name, s in samples.items()}


def dense_case(d: int, dtype, losses, threads: int, megabytes: float, rounds: int, rng) -> list[dict]:
    """Rows of the dense table for one ``(d, dtype)``: every loss, at ``threads`` threads."""

    dtype = np.dtype(dtype)
    n = max(8, int(megabytes * 2**20) // (d * dtype.itemsize))
    X = rng.standard_normal((n, d), dtype=np.float32).astype(dtype, copy=False)
    y = (rng.random(n) < 0.5).astype(dtype)
    w = rng.standard_normal(d) / np.sqrt(d)
    w_data, b = w.astype(dtype), 0.1
    z, out, grad = np.empty(n, dtype=dtype), np.empty(d + 2), np.empty(d)
    precisions = K.PRECISIONS if dtype == np.float32 else ("float64",)
    workspaces = {p: K.dense_workspace(X, threads, p) for p in precisions}
    rows = []
    with _blas_threads(threads):
        for loss in losses:
            blocked = LocalLinearGradient(X, y, get_loss(loss), fit_intercept=True, xp=np, host_kernel="blocked")
            candidates = {"gemv": lambda: np.dot(X, w_data, out=z),
                          "blocked BLAS (pgd.local.linear)": lambda: blocked.loss_gradient(w_data, b, out)}
            for p in precisions:
                candidates[f"numba fused ({p})"] = (
                    lambda p=p, loss=loss: K.dense_loss_grad(X, y, w, b, loss, out_grad=grad, threads=threads,
                                                             precision=p, workspace=workspaces[p]))
            times = interleaved(candidates, rounds)
            floor = times.pop("gemv")
            for name, t in times.items():
                rows.append({"kind": "dense", "d": d, "n": n, "dtype": dtype.name, "loss": loss,
                             "threads": threads, "candidate": name, "ms": 1e3 * t["median"],
                             "floor_ms": 1e3 * floor["median"], "ratio": t["median"] / floor["median"],
                             "ratio_min": t["min"] / floor["min"],
                             "floor_GBps": X.nbytes / floor["median"] / 1e9})
    return rows


def power_law_csr(n: int, d: int, nnz_per_row: int, dtype, rng, exponent: float = 1.1):
    """A text-like CSR matrix: ``nnz_per_row`` distinct columns per row drawn with power-law frequencies."""
    import scipy.sparse as sp  # noqa: PLC0415 - benchmark only

    p = 1.0 / np.arange(1, d + 1) ** exponent
    cols = rng.choice(d, size=n * nnz_per_row, p=p / p.sum()).astype(np.int32)
    indptr = np.arange(0, n * nnz_per_row + 1, nnz_per_row, dtype=np.int64)
    A = sp.csr_matrix((rng.standard_normal(n * nnz_per_row).astype(dtype), cols, indptr), shape=(n, d))
    A.sum_duplicates()
    A.sort_indices()
    return A


def sparse_case(n: int, d: int, nnz_per_row: int, dtype, losses, threads_list, rounds: int, rng) -> list[dict]:
    """Rows of the CSR table: fused kernel (1..k threads) and SciPy's two calls against one SpMV."""

    dtype = np.dtype(dtype)
    A = power_law_csr(n, d, nnz_per_row, dtype, rng)
    AT = A.T   # a CSC view: what X.T @ r runs on
    y = (rng.random(n) < 0.5).astype(dtype)
    w = rng.standard_normal(d) / np.sqrt(nnz_per_row)
    w_data, b = w.astype(dtype), 0.1
    zbuf, work, grad = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype), np.empty(d)
    precisions = K.PRECISIONS if dtype == np.float32 else ("float64",)
    rows = []
    for loss in losses:
        pointwise = get_loss(loss)

        def two_calls():
            np.add(A @ w_data, b, out=zbuf)
            pointwise.sum_and_derivative(y, zbuf, work, np)
            return AT @ zbuf

        candidates = {"spmv": lambda: A @ w_data, "scipy two calls": two_calls}
        for threads in threads_list:
            for p in precisions:
                ws = K.csr_workspace(d, dtype, threads, p)
                candidates[f"numba fused ({p}), {threads} thread{'s' if threads > 1 else ''}"] = (
                    lambda ws=ws, p=p, threads=threads, loss=loss: K.csr_loss_grad(
                        A.data, A.indices, A.indptr, y, w, b, loss, out_grad=grad, threads=threads, precision=p,
                        workspace=ws))
        times = interleaved(candidates, rounds)
        floor = times.pop("spmv")
        for name, t in times.items():
            rows.append({"kind": "csr", "d": d, "n": n, "nnz": int(A.nnz), "dtype": dtype.name, "loss": loss,
                         "candidate": name, "ms": 1e3 * t["median"], "floor_ms": 1e3 * floor["median"],
                         "ratio": t["median"] / floor["median"], "ratio_min": t["min"] / floor["min"]})
    return rows


def pass_throughput(d_list, dtypes, megabytes: float = 8, rounds: int = 15, rng=None) -> list[dict]:
    """In-cache speed of the dense kernel's passes, in GB/s of ``X`` (``megabytes`` of ``X``, in L3 here):
    the block scores, the residuals (squared, logistic) and the gradient accumulation, each over all blocks
    in one compiled loop, against one GEMV over the same (cached) rows.  A pass much faster than memory
    hides behind the stream of ``X``; a pass near memory speed does not."""
    import numba  # noqa: PLC0415 - benchmark only; the kernels are available here

    @numba.njit(nogil=True)
    def scores(X, w, z):
        for start in range(0, X.shape[0], z.shape[0]):
            K._dense_scores(X, w, 0.1, start, min(z.shape[0], X.shape[0] - start), z, 0, 0)

    @numba.njit(nogil=True)
    def terms(y, z, rbuf, lbuf, mode):
        n, block = y.shape[0], z.shape[0]
        total = 0.0
        for start in range(0, n, block):
            total += K._residual_terms(z, y, None, start, min(block, n - start), mode, rbuf, lbuf)[0]
            for k in range(block):
                z[k] = 0.01 * k - 1.0
        return total

    @numba.njit(nogil=True)
    def accumulate(X, rbuf, grad):
        for start in range(0, X.shape[0], rbuf.shape[0]):
            K._dense_accumulate(X, start, min(rbuf.shape[0], X.shape[0] - start), rbuf, grad, 0, 0)

    rng = rng or np.random.default_rng(0)
    rows = []
    for dtype in map(np.dtype, dtypes):
        for d in d_list:
            n = max(8, int(megabytes * 2**20) // (d * dtype.itemsize))
            X = rng.standard_normal((n, d)).astype(dtype)
            y = (rng.random(n) < 0.5).astype(dtype)
            for precision in (K.PRECISIONS if dtype == np.float32 else ("float64",)):
                ws = K.dense_workspace(X, 1, precision)
                w = ws.weights(rng.standard_normal(d))
                z, rbuf, lbuf = ws.z[0], ws.rbuf[0], ws.lbuf[0]
                rbuf[:] = rng.standard_normal(ws.block)
                grad, out = np.zeros(d), np.empty(n, dtype=dtype)
                w_data = w.astype(dtype)
                times = interleaved({"gemv": lambda: np.dot(X, w_data, out=out),
                                     "scores": lambda: scores(X, w, z),
                                     "residuals squared": lambda: terms(y, z, rbuf, lbuf, 0),
                                     "residuals logistic": lambda: terms(y, z, rbuf, lbuf, 1),
                                     "gradient": lambda: accumulate(X, rbuf, grad)}, rounds)
                rows.append({"kind": "passes", "d": d, "dtype": dtype.name, "precision": precision,
                             "block_rows": ws.block,
                             **{name: X.nbytes / t["min"] / 1e9 for name, t in times.items()}})
    return rows


def format_passes(rows: list[dict]) -> str:
    """A plain-text table of :func:`pass_throughput` (GB/s of X, best of the rounds)."""
    names = ("gemv", "scores", "residuals squared", "residuals logistic", "gradient")
    lines = [f"{'dtype':<8}{'d':>6} {'precision':<9}" + "".join(f"{n:>20}" for n in names) + "   (GB/s of X, in cache)"]
    for r in rows:
        lines.append(f"{r['dtype']:<8}{r['d']:>6} {r['precision']:<9}" + "".join(f"{r[n]:>20.1f}" for n in names))
    return "\n".join(lines)


_STARTUP_PROBE = ("import json, time; t = time.perf_counter(); from pgd.local import cpu_kernels as K; "
                  "ok = K.available(); print(json.dumps({'seconds': time.perf_counter() - t, 'available': ok, "
                  "'kernels': K.warm_up()}))")


def startup() -> dict:
    """Seconds to import and compile the kernels into an empty disk cache, then to load them from it."""
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (compile)", "warm (disk cache)"):
            done = subprocess.run([sys.executable, "-c", _STARTUP_PROBE], env=env, capture_output=True,
                                  text=True, check=True)
            result[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of the rows."""
    lines = []
    for r in rows:
        where = f"{r['kind']:<5} d={r['d']:<6} {r['dtype']:<7} {r['loss']:<8}"
        if r["kind"] == "dense":
            where += f" {r['threads']}T"
        lines.append(f"{where} {r['candidate']:<34} {r['ms']:8.2f} ms  floor {r['floor_ms']:7.2f} ms  "
                     f"ratio {r['ratio']:5.2f} (min/min {r['ratio_min']:5.2f})")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgd.bench.cpu_kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=400, help="size of dense X per case (default 400)")
    parser.add_argument("--d", type=_ints, default=[16, 100, 1000])
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--losses", default="squared,logistic")
    parser.add_argument("--threads", type=_ints, default=[1, 2], help="thread counts for the dense cases")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (medians over them)")
    parser.add_argument("--sparse", default="200000,100000,50", help="n,d,nnz_per_row ('' to skip)")
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--passes", action="store_true", help="also the in-cache speed of the dense passes")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    problem = K.unavailable_reason()
    if problem:
        print(f"compiled kernels unavailable: {problem}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    losses, dtypes = args.losses.split(","), args.dtypes.split(",")
    results = {"startup": {} if args.no_startup else startup(), "rows": []}
    if results["startup"]:
        print(json.dumps(results["startup"], indent=1))
    if not args.no_dense:
        for threads in args.threads:
            for dtype in dtypes:
                for d in args.d:
                    rows = dense_case(d, dtype, losses, threads, args.megabytes, args.rounds, rng)
                    print(format_rows(rows), flush=True)
                    results["rows"] += rows
    if args.passes:
        rows = pass_throughput(args.d, dtypes, rng=rng)
        print(format_passes(rows), flush=True)
        results["passes"] = rows
    if args.sparse:
        n, d, nnz = _ints(args.sparse)
        for dtype in dtypes:
            rows = sparse_case(n, d, nnz, dtype, losses, sorted(set(args.threads)), args.rounds, rng)
            print(format_rows(rows), flush=True)
            results["rows"] += rows
    if args.json:
        with atomic_path(args.json, "benchmark results") as path, open(path, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
