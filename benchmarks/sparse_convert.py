"""Conversion speed and peak memory: LIBSVM -> CSR and CSV -> dense, pgd against its peers.

Subcommands (each measurement is its own process, so peak RSS is that conversion's):

    python benchmarks/sparse_convert.py make-libsvm data.svm --n 260000 --d 1000000 --nnz 50
    python benchmarks/sparse_convert.py make-csv data.csv --n 400000 --d 50
    [mpirun -n 2] python benchmarks/sparse_convert.py libsvm data.svm out.h5 [--engine numba|numpy] [--dense]
    python benchmarks/sparse_convert.py csv data.csv out.h5 [--csv-module]
    [mpirun -n 2] python benchmarks/sparse_convert.py csv data.csv out.h5 --parallel
    python benchmarks/sparse_convert.py peer {sklearn-svmlight,pandas-csv,pgd-convert-libsvm,pgd-convert-csv} FILE

Each prints one JSON line: seconds (wall, from the start of the conversion to the file committed), MB/s of
input, and peak RSS in MB (max over ranks, and per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report(kind: str, path: str, seconds: float, group=None, cpu: float | None = None, **extra) -> None:
    """One JSON line from rank 0; ``cpu`` is this rank's CPU seconds in the conversion (gathered), which
    shows the work per rank even when other jobs share the cores."""
    size = os.path.getsize(path) / 1e6
    rss = [peak_rss_mb()] if group is None else group.allgather(peak_rss_mb())
    if cpu is not None:
        cpus = [cpu] if group is None else group.allgather(cpu)
        extra = {"cpu_seconds": [round(c, 3) for c in cpus], **extra}
    if group is None or group.rank == 0:
        print(json.dumps({"kind": kind, "input_mb": round(size, 1), "seconds": round(seconds, 3),
                          "mb_per_s": round(size / seconds, 1), "ranks": 1 if group is None else group.size,
                          "peak_rss_mb_max": round(max(rss), 1), "peak_rss_mb": [round(r, 1) for r in rss], **extra}))


def make_libsvm(args) -> None:
    from pgd.data.csr import inspect_csr
    from pgd.data.csr_slab import read_csr_slab
    from pgd.data.sparse_generate import generate_sparse
    tmp = args.out + ".gen.h5"
    generate_sparse(tmp, args.n, args.d, args.nnz, seed=args.seed)
    meta = inspect_csr(tmp)
    with open(args.out, "w") as handle:
        for lo in range(0, meta.n, 20000):
            slab = read_csr_slab(meta, lo, min(lo + 20000, meta.n), "float64")
            for i in range(slab.n_rows):
                a, b = slab.indptr[i], slab.indptr[i + 1]
                pairs = zip(slab.indices[a:b].tolist(), slab.data[a:b].tolist())
                features = " ".join(f"{j + 1}:{v:.6g}" for j, v in pairs)
                handle.write(f"{'+1' if slab.y[i] else '-1'} {features}\n")
    os.unlink(tmp)


def make_csv(args) -> None:
    rng = np.random.default_rng(args.seed)
    with open(args.out, "w") as handle:
        handle.write(",".join([f"x{j}" for j in range(args.d)] + ["y"]) + "\n")
        for lo in range(0, args.n, 20000):
            rows = min(20000, args.n - lo)
            block = np.column_stack([rng.standard_normal((rows, args.d)), rng.integers(0, 2, rows)])
            np.savetxt(handle, block, delimiter=",", fmt=["%.8g"] * args.d + ["%d"])


def convert_libsvm_bench(args) -> None:
    from pgd.data.libsvm_convert import convert_libsvm
    group = _collective()
    load = time.perf_counter()
    if args.engine != "numpy":  # numba's import and on-disk cache load: a fixed cost per process, shown apart
        from pgd.data.libsvm_parse import parse_libsvm_block
        parse_libsvm_block(b"1 1:1\n", args.engine)
    load = time.perf_counter() - load
    if group.size > 1:
        group.allgather(None)
    start, cpu = time.perf_counter(), cpu_seconds()
    summary = convert_libsvm(args.src, args.out, engine=args.engine, dense=args.dense, collective=group,
                             labels="pm1")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    report("pgd libsvm->" + ("dense" if args.dense else "csr"), args.src, seconds, group, cpu, engine=args.engine,
           engine_load_seconds=round(load, 3),
           n=summary["n"], d=summary["d"], nnz=summary["nnz"], phases=summary["seconds"],
           output_mb=round(os.path.getsize(args.out) / 1e6, 1))


def _collective():
    from pgd.data.libsvm_convert import Collective
    if os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE"):
        from mpi4py import MPI
        return Collective.from_comm(MPI.COMM_WORLD)
    return Collective()


def convert_csv_bench(args) -> None:
    from pgd.data import sparse_csv
    from pgd.data.convert import convert_file
    from pgd.data.sparse_csv_convert import convert_csv_parallel
    if args.csv_module:  # the csv-module path alone (what runs without numba)
        sparse_csv._kernels = lambda: None
    group = _collective() if args.parallel else None
    load = time.perf_counter()
    if not args.csv_module:  # numba's import and cache load, a fixed cost per process, shown apart
        count, parse = sparse_csv._kernels()
        text = np.frombuffer(b"1,2\n", dtype=np.uint8)
        count(text, 44)
        parse(text, 3, 44, 2, np.empty((2, 2)), np.empty(2, dtype=np.int64))
    load = time.perf_counter() - load
    if group is not None:
        group.allgather(None)
    start, cpu = time.perf_counter(), cpu_seconds()
    if group is not None:
        summary = convert_csv_parallel(args.src, args.out, collective=group)
    else:
        summary = convert_file(args.src, args.out, "csv")
    kind = "pgd csv->dense" + (" (csv module)" if args.csv_module else "") + (" parallel" if args.parallel else "")
    report(kind, args.src, time.perf_counter() - start, group, cpu=cpu_seconds() - cpu, n=summary["n"],
           d=summary["d"], engine_load_seconds=round(load, 3),
           **({"phases": summary["seconds"]} if args.parallel else {}))


def peer(args) -> None:
    start, cpu = time.perf_counter(), cpu_seconds()
    if args.tool == "sklearn-svmlight":
        from sklearn.datasets import load_svmlight_file
        X, _ = load_svmlight_file(args.src)
        extra = {"nnz": int(X.nnz)}
    elif args.tool == "pandas-csv":
        import pandas
        frame = pandas.read_csv(args.src)
        extra = {"shape": list(frame.shape)}
    elif args.tool in ("pgd-convert-libsvm", "pgd-convert-csv"):
        from pgd.data.convert import convert_file
        fmt = args.tool.rsplit("-", 1)[1]
        summary = convert_file(args.src, args.src + ".old.h5", fmt)
        os.unlink(args.src + ".old.h5")
        extra = {"n": summary["n"], "d": summary["d"]}
    else:
        raise SystemExit(f"unknown tool {args.tool}")
    report(args.tool, args.src, time.perf_counter() - start, cpu=cpu_seconds() - cpu, **extra)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-libsvm")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=260000)
    p.add_argument("--d", type=int, default=1000000)
    p.add_argument("--nnz", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=make_libsvm)
    p = sub.add_parser("make-csv")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=400000)
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=make_csv)
    p = sub.add_parser("libsvm")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--engine", default="auto")
    p.add_argument("--dense", action="store_true")
    p.set_defaults(run=convert_libsvm_bench)
    p = sub.add_parser("csv")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--csv-module", action="store_true", help="without the compiled fast path")
    p.add_argument("--parallel", action="store_true", help="convert_csv_parallel (under mpirun: every rank)")
    p.set_defaults(run=convert_csv_bench)
    p = sub.add_parser("peer")
    p.add_argument("tool")
    p.add_argument("src")
    p.set_defaults(run=peer)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
