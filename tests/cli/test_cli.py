"""The command line end to end: info, data tools, evaluate and predict under mpirun."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from support import ROOT
from support.files import read_weights, write_dataset
from support.mpi import run_pgd

REPO = str(ROOT)


@pytest.mark.mpi
def test_info_reports_layout_and_no_gpu():
    result = run_pgd(2, "info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)  # printed once, by rank 0
    assert info["world_size"] == 2 and info["ranks_per_node"] == 2 and info["nodes"] == 1
    assert info["cuda_aware"] == "no GPU" and info["gpus"] == 0
    assert "Open MPI" in info["mpi_library"] or "MPICH" in info["mpi_library"]


@pytest.mark.mpi
def test_data_tools_chain(tmp_path):
    out = tmp_path / "lib.h5"
    result = run_pgd(2, "data", "convert", os.path.join(REPO, "data", "sample.libsvm"), out,
                     "--from", "libsvm", "--labels", "pm1")
    assert result.returncode == 0, result.stderr
    result = run_pgd(3, "data", "info", out, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["n"] == 20 and info["non_finite"] == 0 and info["labels"]["is_binary01"]
    generated = tmp_path / "gen.h5"
    result = run_pgd(2, "data", "generate", generated, "--task", "regression", "--n", "1000", "--d", "4",
                     "--chunk-rows", "100")
    assert result.returncode == 0, result.stderr
    with h5py.File(generated) as handle:
        assert handle["X"].shape == (1000, 4) and handle["X"].chunks == (100, 4)


@pytest.mark.mpi
def test_evaluate_and_predict_match_numpy(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((103, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.standard_normal(103) > 0).astype(float)
    y[:4] = [0, 1, 0, 1]
    data = write_dataset(tmp_path / "d.h5", X, y)
    model = tmp_path / "m.h5"
    assert run_pgd(2, "train", data, "--loss", "logistic", "--max-iter", "50", "--quiet",
                   "--out", model).returncode == 0
    w, b, _ = read_weights(model)
    z = X @ w + b
    result = run_pgd(3, "evaluate", model, data, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    pairs = [(zp > zn) + 0.5 * (zp == zn) for zp in z[y == 1] for zn in z[y == 0]]
    assert metrics["roc_auc"] == pytest.approx(np.mean(pairs), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean((z > 0) == (y == 1)))
    assert metrics["log_loss"] == pytest.approx(np.mean(np.logaddexp(0, z) - y * z), rel=1e-9)
    assert metrics["n"] == 103
    pred = tmp_path / "p.h5"
    result = run_pgd(3, "predict", model, data, "--out", pred)
    assert result.returncode == 0, result.stderr
    with h5py.File(pred) as handle:
        np.testing.assert_allclose(handle["score"][...], z, rtol=1e-12)
        np.testing.assert_allclose(handle["prediction"][...], 1 / (1 + np.exp(-z)), rtol=1e-12)
        assert set(np.unique(handle["label"][...])) <= {0.0, 1.0}


@pytest.mark.mpi
def test_regression_evaluate(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 3))
    y = X @ np.array([1.0, 2.0, -1.0]) + 0.1 * rng.standard_normal(50)
    data = write_dataset(tmp_path / "r.h5", X, y)
    model = tmp_path / "m.h5"
    assert run_pgd(1, "train", data, "--loss", "squared", "--quiet", "--out", model).returncode == 0
    w, b, _ = read_weights(model)
    residual = X @ w + b - y
    result = run_pgd(2, "evaluate", model, data, "--json")
    metrics = json.loads(result.stdout)
    assert metrics["mse"] == pytest.approx(np.mean(residual ** 2), rel=1e-10)
    assert metrics["r2"] == pytest.approx(1 - np.sum(residual ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-10)


@pytest.mark.mpi
def test_dry_run_writes_nothing(tmp_path):
    data = write_dataset(tmp_path / "d.h5", np.ones((10, 2)), np.zeros(10))
    result = run_pgd(3, "train", data, "--loss", "squared", "--dry-run", "--out", tmp_path / "m.h5")
    assert result.returncode == 0, result.stderr
    assert "rows per rank [4, 3, 3]" in result.stdout
    assert not (tmp_path / "m.h5").exists()


def test_blas_threads_one_per_core_available():
    from pgd.runtime.launcher import configure_blas_threads, cores_per_rank

    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    threads, reason = configure_blas_threads(env)
    assert threads == cores_per_rank(env) and env["OPENBLAS_NUM_THREADS"] == str(threads)
    env = {"PGD_BLAS_THREADS": "3", "OMP_NUM_THREADS": "8"}
    assert configure_blas_threads(env) == (3, "PGD_BLAS_THREADS") and env["OMP_NUM_THREADS"] == "3"
    env = {"OMP_NUM_THREADS": "5"}
    assert configure_blas_threads(env) == (5, "OMP_NUM_THREADS")
    many = {"OMPI_COMM_WORLD_LOCAL_SIZE": "1000"}
    assert cores_per_rank(many) == 1


def test_launcher_environment():
    from pgd.runtime.launcher import launcher_local_size, launcher_rank, launcher_size

    assert launcher_rank({"PMI_RANK": "3"}) == 3 and launcher_rank({}) == 0
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8 and launcher_size({}) is None
    assert launcher_local_size({"SLURM_STEP_TASKS_PER_NODE": "4(x2),3"}) == 4
