"""pgd bench scaling / comm / peers in tiny configurations: well-formed CSV, JSON and PNG."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pgd.bench.comm import fit_alpha_beta, message_sizes
from pgd.bench.common import child_environment
from pgd.bench.modes import format_modes_bench
from pgd.bench.scaling import COLUMNS, add_speedup, launcher_command, parse_ranks
from pgd.errors import InputError
from support.mpi import needs_mpirun, run_pgd

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_bench(*args, timeout=180):
    """``pgd bench ARGS`` as one process (it launches its own mpirun runs)."""
    return subprocess.run([sys.executable, "-m", "pgd", "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PGD_BLAS_THREADS="1"))


def read_outputs(out, stem):
    with open(os.path.join(out, f"{stem}.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(os.path.join(out, f"{stem}.json"), encoding="utf-8") as handle:
        document = json.load(handle)
    return rows, document


def check_png(path):
    if not HAVE_MATPLOTLIB:
        return
    with open(path, "rb") as handle:
        head = handle.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_units_without_mpi():
    assert message_sizes(8, 4096) == [8, 32, 128, 512, 2048, 4096]
    sizes = np.array(message_sizes(8, 1 << 20))
    alpha, beta = fit_alpha_beta(sizes, 2e-6 + sizes / 5e9)
    assert alpha == pytest.approx(2e-6, rel=1e-6) and 1 / beta == pytest.approx(5e9, rel=1e-6)
    assert parse_ranks("4, 1,2,2") == [1, 2, 4]
    with pytest.raises(InputError):
        parse_ranks("1,x")
    strong = [{"ranks": 1, "time_per_iter": 4.0}, {"ranks": 2, "time_per_iter": 2.5}]
    add_speedup(strong, "strong")
    assert strong[1]["speedup"] == 1.6 and strong[1]["efficiency"] == 0.8
    weak = [{"ranks": 2, "time_per_iter": 2.0}, {"ranks": 4, "time_per_iter": 2.5}]
    add_speedup(weak, "weak")
    assert weak[0]["efficiency"] == 1.0 and weak[1]["efficiency"] == 0.8 and weak[1]["speedup"] == 1.6
    env = child_environment({"OMP_NUM_THREADS": "2", "PGD_BLAS_THREADS_RESOLVED":
                             "2 (one per core available to the rank)"})
    assert "OMP_NUM_THREADS" not in env and "PGD_BLAS_THREADS_RESOLVED" not in env
    kept = child_environment({"OMP_NUM_THREADS": "3", "PGD_BLAS_THREADS_RESOLVED": "3 (OMP_NUM_THREADS)"})
    assert kept["OMP_NUM_THREADS"] == "3"
    assert launcher_command(3, {"SLURM_JOB_ID": "42"}) == ["srun", "-n", "3"]


@pytest.mark.mpi
@needs_mpirun
@pytest.mark.parametrize("kind", ["strong", "weak"])
def test_bench_scaling(tmp_path, kind):
    out = tmp_path / kind
    done = run_bench("scaling", "--kind", kind, "--ranks", "1,2", "--n", 600, "--d", 5, "--loss", "logistic",
                     "--warmup", 1, "--repeats", 2, "--iters", 2, "--out", out,
                     "--plot" if HAVE_MATPLOTLIB else "--no-plot")
    assert done.returncode == 0, done.stderr
    rows, document = read_outputs(out, "results")
    assert list(rows[0]) == COLUMNS and [int(row["ranks"]) for row in rows] == [1, 2]
    assert [int(row["n"]) for row in rows] == ([600, 600] if kind == "strong" else [600, 1200])
    assert float(rows[0]["efficiency"]) == 1.0
    for row in rows:
        assert float(row["time_per_iter"]) > 0 and float(row["compute"]) > 0
        assert row["kind"] == kind and row["loss"] == "logistic" and row["mode"] == "data"
    assert float(rows[1]["communication"]) > 0 and float(rows[1]["comm_bytes"]) == 8 * (5 + 2)
    meta = document["meta"]
    for key in ("pgd_version", "git_commit", "mpi_library", "device", "cuda_aware", "host"):
        assert meta[key], key
    assert document["rows"][1]["ranks"] == 2
    check_png(out / f"scaling-{kind}.png")
    assert "speedup" in done.stdout


@pytest.mark.mpi
@needs_mpirun
def test_bench_scaling_reports_a_failed_run(tmp_path):
    done = run_bench("scaling", "--ranks", "1", "--n", 50, "--d", 3, "--mode", "nope", "--out", tmp_path)
    assert done.returncode != 0
    assert "1-rank run failed" in done.stderr and "nope" in done.stderr
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.mpi
def test_bench_comm(tmp_path):
    done = run_pgd(2, "bench", "comm", "--max-bytes", 4096, "--repeats", 2, "--no-gpu", "--out", tmp_path,
                   "--plot" if HAVE_MATPLOTLIB else "--no-plot")
    assert done.returncode == 0, done.stderr
    rows, document = read_outputs(tmp_path, "comm")
    assert {row["method"] for row in rows} == {"allreduce", "reduce-bcast"}
    assert [int(row["bytes"]) for row in rows if row["method"] == "allreduce"] == [8, 32, 128, 512, 2048, 4096]
    assert all(float(row["latency_us"]) > 0 and float(row["model_us"]) > 0 for row in rows)
    assert all(int(row["ranks"]) == 2 for row in rows)
    assert set(document["meta"]["models"]) == {"allreduce", "reduce-bcast"}
    assert "alpha =" in done.stdout and "model us" in done.stdout
    check_png(tmp_path / "comm.png")


@pytest.mark.mpi
def test_bench_modes_never_prints_an_impossible_row():
    done = run_pgd(2, "bench", "modes", "--shapes", "tall=2000x8,wide=40x400", "--repeats", 5, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [row["mode"] for row in result["results"]] == ["data", "feature", "hybrid"] * 2
    assert result["alpha"] > 0 and result["beta"] >= 0
    for row in result["results"]:  # communication is measured in the iterations it is part of
        assert 0 < row["comm_seconds"] <= row["seconds_per_iteration"], row
        assert row["estimate_plausible"] == (row["estimate_comm_seconds"] <= row["seconds_per_iteration"])
    note = "exceeds the whole measured iteration" in format_modes_bench(result)
    assert note == (not all(row["estimate_plausible"] for row in result["results"]))
    # a latency of a second cannot describe sub-second iterations: no number, a note instead
    slow = dict(result, results=[dict(row, estimate_comm_seconds=1.0 + row["seconds_per_iteration"])
                                 for row in result["results"]])
    lines = format_modes_bench(slow).splitlines()
    assert all(line.split()[-2:] == ["*", str(row["bytes_per_iteration"])]
               for line, row in zip(lines[2:-2], slow["results"]))
    assert "exceeds the whole measured iteration" in lines[-2] and "--alpha/--beta" in lines[-1]


@pytest.mark.mpi
@needs_mpirun
def test_bench_peers(tmp_path):
    tools = [tool for tool, module in (("sklearn", "sklearn"), ("torch", "torch"))
             if importlib.util.find_spec(module)]
    done = run_bench("peers", "--n", 2000, "--d", 5, "--ranks", 1, "--max-iter", 200,
                     "--tools", ",".join(tools) or "none", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    rows, document = read_outputs(tmp_path, "peers")
    assert rows[0]["tool"] == "pgd" and int(rows[0]["iterations"]) > 0
    expected = {"pgd"} | {"scikit-learn" for tool in tools if tool == "sklearn"} | \
        {"pytorch" for tool in tools if tool == "torch"}
    assert {row["tool"] for row in rows} == expected
    target = document["meta"]["target"]
    for row in rows:
        if row["tool"] in ("pgd", "pytorch"):  # same gradient descent, same step: both reach the target
            assert float(row["loss"]) <= target * (1 + 1e-6) and row["iters_to_target"]
        assert float(row["loss"]) > 0 and float(row["rel_gap"]) < 1e-2


def test_plots_without_matplotlib_fail_in_one_line(monkeypatch):
    from pgd.bench.plots import plot_scaling

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InputError, match=r"pip install 'pgd\[plot\]'"):
        plot_scaling([{"ranks": 1, "time_per_iter": 1.0}], "strong", "unused.png")


@needs_mpirun
def test_bench_gradient_times_every_path_against_the_same_run_floor():
    result = run_pgd(2, "bench", "gradient", "--n", "3001", "--d", "9", "--repeats", "3", "--loss", "logistic",
                     "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["ranks"] == 2 and document["rows_per_rank"] in (1500, 1501)
    assert "numba" in document["kernels"]["fused_iteration"]
    assert "blocked" in document["kernels"]["blocked_iteration"]
    for key in ("fused_iteration", "blocked_iteration", "naive_iteration"):
        assert document[key] > 0 and document[f"{key}_over_gemv"] == pytest.approx(document[key] / document["gemv"])
    assert document["gemv_over_gemv"] == 1.0
