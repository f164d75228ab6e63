"""``pgd bench peers``: the same problem solved by pgd and by the tools a user would pick instead.

One dataset, one objective ``(1/n) Σ loss_i + (λ/2)‖w‖²`` (intercept unpenalised). Every tool's final
weights are scored by the same float64 evaluation of that objective. The *target* is the best loss reached
by pgd's run (gradient descent, ``--lr auto``, to a tight tolerance) or by an exact solver
(scikit-learn's LinearRegression/Ridge or lbfgs), times ``1 + target_rtol``. Reported per tool: time per
iteration, iterations and wall time to reach the target (when it does), total iterations and wall time,
and the loss reached.

Peers, each only when installed (``pip install 'pgd[peers]'``): scikit-learn (LinearRegression or Ridge
and SGDRegressor for squared loss, LogisticRegression for logistic), PyTorch DistributedDataParallel with
gloo on CPU (NCCL on GPUs) running the same full-batch gradient descent with pgd's step size, and Spark MLlib in local
mode. Data loading and process start-up are not timed for any tool.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

from pgd.errors import PgdError

#: Table columns: (header, key, format).
TABLE = [("tool", "tool", ""), ("method", "method", ""), ("ms/iter", "ms_per_iter", ".2f"),
         ("iters to target", "iters_to_target", "d"), ("s to target", "seconds_to_target", ".3f"),
         ("iters", "iterations", "d"), ("wall s", "wall_s", ".3f"), ("loss", "loss", ".8f"),
         ("rel. gap", "rel_gap", ".1e")]


def installed(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def load_xy(path: str, start: int = 0, stop: int | None = None):
    """Rows ``[start, stop)`` of a pgd dataset as NumPy arrays."""
    import h5py  # noqa: PLC0415

    with h5py.File(path, "r") as handle:
        return handle["X"][start:stop], handle["y"][start:stop]


def objective_value(X, y, w, b: float, loss: str, l2: float) -> float:
    """``(1/n) Σ loss(y_i, x_i·w + b) + (λ/2)‖w‖²`` in float64 (pgd's blocked kernel)."""
    from pgd.local.linear import LocalLinearGradient  # noqa: PLC0415
    from pgd.local.losses import get_loss  # noqa: PLC0415

    local = LocalLinearGradient(X, y, get_loss(loss), fit_intercept=True, xp=np)
    sums = np.zeros(X.shape[1] + 2)
    local.loss_gradient(np.asarray(w, dtype=local.dtype), float(b), sums)
    w = np.asarray(w, dtype=np.float64)
    return float(sums[-1] / len(y) + 0.5 * l2 * w @ w)


def first_reaching(losses, times, target: float):
    """``(iterations, seconds)`` of the first iterate with loss <= target, or ``(None, None)``."""
    for index, value in enumerate(losses):
        if value <= target:
            return index, times[index]
    return None, None


def run_pgd(data: str, out: str, *, ranks: int, loss: str, l2: float, max_iter: int, timeout: float) -> dict:
    """pgd's gradient descent under mpirun, ``--lr auto``, to a tight tolerance; its history and timing."""
    import h5py  # noqa: PLC0415

    from pgd.bench.common import child_environment  # noqa: PLC0415
    from pgd.bench.scaling import launcher_command  # noqa: PLC0415

    model = os.path.join(out, f"peers-pgd-{ranks}.h5")
    command = launcher_command(ranks) + [sys.executable, "-m", "pgd", "train", data, "--loss", loss,
                                         "--l2", repr(l2), "--tol", "1e-8", "--rtol", "1e-10", "--max-iter",
                                         str(max_iter), "--out", model, "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_environment())
    if done.returncode != 0:
        raise PgdError(f"pgd train failed in the peers benchmark: {(done.stderr or done.stdout).strip()[-300:]}")
    with h5py.File(model, "r") as handle:
        timing = json.loads(handle.attrs["timing"])
        history = {key: handle[f"history/{key}"][...].tolist() for key in ("loss", "time")}
        w, b, lr = handle["w"][...], float(handle["b"][()]), float(handle.attrs["lr"])
    iterations = len(history["loss"]) - 1
    return {"tool": "pgd", "method": f"gd, {ranks} MPI rank(s)", "w": w, "b": b, "lr": lr,
            "iterations": iterations, "wall_s": timing["wall"], "history": history,
            "ms_per_iter": timing["per_iteration"] * 1e3}


def run_sklearn(X, y, loss: str, l2: float) -> list[dict]:
    """scikit-learn's estimators for this loss, each fitted once (float64 copies made before timing)."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDRegressor  # noqa

    n = len(y)
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    if loss == "squared":
        exact = (Ridge(alpha=l2 * n, solver="cholesky"), "Ridge cholesky") if l2 else \
            (LinearRegression(), "LinearRegression")
        sgd = (SGDRegressor(alpha=l2, penalty="l2" if l2 else None, max_iter=1000, tol=1e-6, random_state=0),
               "SGDRegressor")
        candidates = [exact, sgd]
    else:
        candidates = [(LogisticRegression(C=1.0 / (l2 * n), tol=1e-8, max_iter=1000) if l2 else
                       LogisticRegression(penalty=None, tol=1e-8, max_iter=1000), "LogisticRegression lbfgs")]
    rows = []
    for estimator, name in candidates:
        started = time.perf_counter()
        estimator.fit(X64, y64)
        wall = time.perf_counter() - started
        n_iter = getattr(estimator, "n_iter_", None)
        n_iter = int(np.max(n_iter)) if n_iter is not None else None
        rows.append({"tool": "scikit-learn", "method": name, "w": np.ravel(estimator.coef_),
                     "b": float(np.ravel(estimator.intercept_)[0]), "iterations": n_iter, "wall_s": wall,
                     "ms_per_iter": wall / n_iter * 1e3 if n_iter else None, "exact": "SGD" not in name})
    return rows


def _torch_worker(rank: int, size: int, spec: dict) -> None:
    """One DDP process: full-batch gradient descent on its rows, stopping at the target (global loss)."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

    from pgd.data import block_range  # noqa: PLC0415

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    on_gpu = spec["backend"] == "nccl"  # one GPU per process, picked like pgd: rank % device count
    device = torch.device("cuda", rank % torch.cuda.device_count()) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(spec["backend"], init_method=spec["rendezvous"], rank=rank, world_size=size)
    start, stop = block_range(spec["n"], size, rank)
    X, y = (torch.from_numpy(array).to(device) for array in load_xy(spec["data"], start, stop))
    model = torch.nn.Linear(X.shape[1], 1).to(device)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=spec["lr"])
    n, l2, logistic = spec["n"], spec["l2"], spec["loss"] == "logistic"
    losses, times, total = [], [], torch.zeros(1, dtype=torch.float64, device=device)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(spec["max_iter"] + 1):
        optimizer.zero_grad()
        z = ddp(X).squeeze(1)
        local = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum") if logistic
                 else 0.5 * torch.sum((z - y) ** 2))
        penalty = 0.5 * l2 * torch.sum(model.weight ** 2)
        (local * (size / n) + penalty).backward()  # DDP averages over ranks: the global gradient
        total[0] = local.detach().double()
        dist.all_reduce(total)
        losses.append(float(total[0]) / n + float(penalty.detach()))
        times.append(time.perf_counter() - started)
        if losses[-1] <= spec["target"] or len(losses) > spec["max_iter"]:
            break
        optimizer.step()
    wall = time.perf_counter() - started
    if rank == 0:
        with open(spec["result"], "w", encoding="utf-8") as handle:
            json.dump({"losses": losses, "times": times, "wall": wall,
                       "w": model.weight.detach().double().ravel().tolist(), "b": float(model.bias.detach())}, handle)
    dist.destroy_process_group()


def run_torch(data: str, out: str, *, ranks: int, n: int, loss: str, l2: float, lr: float, target: float,
              max_iter: int) -> dict:
    """PyTorch DDP on ``ranks`` processes with pgd's step size, until the target loss: NCCL with one GPU per
    process where CUDA is available, gloo on the CPU otherwise."""
    import torch  # noqa: PLC0415
    import torch.multiprocessing as mp  # noqa: PLC0415

    backend = "nccl" if torch.cuda.is_available() else "gloo"

    rendezvous = os.path.join(os.path.abspath(out), f".torch-rendezvous-{os.getpid()}")
    if os.path.exists(rendezvous):
        os.unlink(rendezvous)
    spec = {"data": data, "n": n, "loss": loss, "l2": l2, "lr": lr, "target": target, "max_iter": max_iter,
            "rendezvous": f"file://{rendezvous}", "backend": backend,
            "result": os.path.join(out, f"peers-torch-{ranks}.json")}
    mp.spawn(_torch_worker, args=(ranks, spec), nprocs=ranks, join=True)
    with open(spec["result"], encoding="utf-8") as handle:
        result = json.load(handle)
    iterations = len(result["losses"]) - 1
    return {"tool": "pytorch", "method": f"DDP {backend}, {ranks} process(es), gd", "w": np.array(result["w"]),
            "b": result["b"], "iterations": iterations, "wall_s": result["wall"],
            "history": {"loss": result["losses"], "time": result["times"]},
            "ms_per_iter": result["wall"] / max(iterations, 1) * 1e3}


def run_spark(X, y, *, ranks: int, loss: str, l2: float, max_iter: int) -> dict:
    """Spark MLlib in ``local[ranks]`` mode (L-BFGS); session start and DataFrame creation not timed."""
    from pyspark.ml.classification import LogisticRegression  # noqa: PLC0415
    from pyspark.ml.linalg import Vectors  # noqa: PLC0415
    from pyspark.ml.regression import LinearRegression  # noqa: PLC0415
    from pyspark.sql import SparkSession  # noqa: PLC0415

    spark = (SparkSession.builder.master(f"local[{ranks}]").appName("pgd-bench-peers")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        frame = spark.createDataFrame([(float(label), Vectors.dense(row)) for row, label in
                                       zip(X.astype(np.float64), y)], ["label", "features"]).cache()
        frame.count()
        kind = LogisticRegression if loss == "logistic" else LinearRegression
        estimator = kind(maxIter=max_iter, regParam=l2, elasticNetParam=0.0, standardization=False, tol=1e-10)
        started = time.perf_counter()
        fitted = estimator.fit(frame)
        wall = time.perf_counter() - started
        iterations = fitted.summary.totalIterations
        return {"tool": "spark mllib", "method": f"{kind.__name__} l-bfgs, local[{ranks}]",
                "w": fitted.coefficients.toArray(), "b": float(fitted.intercept), "iterations": iterations,
                "wall_s": wall, "ms_per_iter": wall / max(iterations, 1) * 1e3}
    finally:
        spark.stop()


def score(rows: list[dict], X, y, loss: str, l2: float, target_rtol: float) -> float:
    """Score every row with the shared objective; fill gap and time/iterations to the target in place."""
    for row in rows:
        row["loss"] = objective_value(X, y, row["w"], row["b"], loss, l2)
    candidates = [row["loss"] for row in rows if row["tool"] == "pgd" or row.get("exact")]
    best = min(candidates)
    target = best * (1 + target_rtol) if best > 0 else best + target_rtol
    for row in rows:
        row["rel_gap"] = (row["loss"] - best) / abs(best) if best else row["loss"]
        if "history" in row:
            row["iters_to_target"], row["seconds_to_target"] = first_reaching(
                row["history"]["loss"], row["history"]["time"], target)
        elif row["loss"] <= target:
            row["iters_to_target"], row["seconds_to_target"] = row["iterations"], row["wall_s"]
    return target


def run_peers(*, n: int, d: int, loss: str, l2: float, ranks: int, out: str, max_iter: int = 500,
              target_rtol: float = 1e-4, tools=("sklearn", "torch", "spark"), timeout: float = 1800.0,
              echo=print) -> dict:
    """Generate the data, run pgd and each installed peer, score them, write peers.csv/.json."""
    from pgd.bench.common import machine_facts, write_results  # noqa: PLC0415
    from pgd.data import generate_dataset  # noqa: PLC0415

    os.makedirs(out, exist_ok=True)
    task = "binary" if loss == "logistic" else "regression"
    data = os.path.abspath(os.path.join(out, f"peers-{task}-{n}x{d}.h5"))
    if not os.path.exists(data):
        generate_dataset(data, task, n, d, seed=2, dtype="float32")
    X, y = load_xy(data)
    notes, rows = [], [run_pgd(data, out, ranks=ranks, loss=loss, l2=l2, max_iter=max_iter, timeout=timeout)]
    echo(f"  pgd: {rows[0]['iterations']} iterations, {rows[0]['wall_s']:.3f} s")
    if "sklearn" in tools and installed("sklearn"):
        rows += run_sklearn(X, y, loss, l2)
        echo("  scikit-learn: done")
    elif "sklearn" in tools:
        notes.append("scikit-learn not installed: skipped")
    target = score(rows, X, y, loss, l2, target_rtol)
    if "torch" in tools and installed("torch"):
        rows.append(run_torch(data, out, ranks=ranks, n=n, loss=loss, l2=l2, lr=rows[0]["lr"], target=target,
                              max_iter=max_iter))
        echo(f"  pytorch: {rows[-1]['iterations']} iterations")
    elif "torch" in tools:
        notes.append("torch not installed: skipped")
    if "spark" in tools and installed("pyspark"):
        try:
            rows.append(run_spark(X, y, ranks=ranks, loss=loss, l2=l2, max_iter=max_iter))
            echo("  spark: done")
        except Exception as error:  # noqa: BLE001 - no Java, no memory, ...: a peer is optional
            notes.append(f"spark failed, skipped: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    elif "spark" in tools:
        notes.append("pyspark not installed: skipped")
    target = score(rows, X, y, loss, l2, target_rtol)
    table = [{key: row.get(key) for _, key, _ in TABLE} for row in rows]
    meta = dict(machine_facts(), n=n, d=d, loss=loss, l2=l2, ranks=ranks, target=target,
                target_rtol=target_rtol, notes=notes,
                versions={module: _version(module) for module in ("sklearn", "torch", "pyspark")})
    files = list(write_results(out, "peers", table, meta))
    return {"meta": meta, "rows": table, "files": files}


def _version(module: str) -> str | None:
    if not installed(module):
        return None
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version({"sklearn": "scikit-learn"}.get(module, module))
    except PackageNotFoundError:
        return "unknown"


def format_peers(result: dict) -> str:
    """The comparison table."""
    from pgd.bench.common import format_table  # noqa: PLC0415

    meta = result["meta"]
    head = (f"peers: {meta['n']} x {meta['d']} float32, {meta['loss']} loss, l2 {meta['l2']:g}; target loss "
            f"{meta['target']:.8f} (best exact loss x (1 + {meta['target_rtol']:g}))")
    lines = [head, format_table(result["rows"], TABLE)]
    lines += [f"note: {note}" for note in meta["notes"]]
    lines.append("wrote " + ", ".join(result["files"]))
    return "\n".join(lines)
