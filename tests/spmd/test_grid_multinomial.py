"""Multinomial logistic regression in feature and hybrid (grid) modes: the same model as data mode.

A generated 3-class problem (97 x 7, columns of different scales and offsets, so standardisation matters;
n not divisible by P, d not divisible by Q), float64. Every grid run is compared with data mode on the same
ranks in the same launch (one launch per rank count, several runs each): to 1e-8 of the largest coefficient
after a tight L-BFGS run (``--tol 1e-10``), and for a fixed-budget gd run with ``--lr auto`` the iterates and the
power iteration's step agree too. Replicas are checked after every step (``PGD_CHECK_REPLICAS``).
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from pgd.strategies.grid import parse_grid
from support import script
from support.files import write_dataset
from support.mpi import run_python

CHECK = script("mpi_grid_check.py")
N, D, K = 97, 7, 3
TIGHT = ["--loss", "multinomial", "--l2", 1e-2, "--tol", 1e-10, "--rtol", 0, "--max-iter", 2000, "--quiet",
         "--dtype", "float64"]
GD = ["--loss", "multinomial", "--l2", 1e-2, "--optimizer", "gd", "--lr", "auto", "--max-iter", 25, "--tol", 0,
      "--rtol", 0, "--quiet", "--dtype", "float64"]
VARIANTS = {   # name -> (dataset, options)
    "plain": ("plain", ["--no-standardize"]),
    "std": ("plain", []),
    "weighted": ("weighted", ["--no-standardize", "--class-weight", "balanced"]),
    "weighted-std": ("weighted", ["--class-weight", "0.5,1,2"]),
    "no-intercept": ("weighted", ["--no-fit-intercept"]),
    "l1": ("plain", ["--l1", 1e-2, "--l2", 0]),
}
GRIDS = {3: ["1x3", "3x1"], 4: ["1x4", "2x2"]}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid-multinomial")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N, D)) * rng.uniform(0.2, 5.0, D) + rng.uniform(-3.0, 3.0, D)
    W = rng.standard_normal((D, K))
    y = np.argmax((X - X.mean(axis=0)) / X.std(axis=0) @ W + rng.gumbel(size=(N, K)), axis=1).astype(float)
    paths = {"plain": write_dataset(folder / "plain.h5", X, y),
             "weighted": write_dataset(folder / "weighted.h5", X, y)}
    with h5py.File(paths["weighted"], "a") as handle:
        handle["sample_weight"] = rng.uniform(0.5, 2.0, N)
    return folder, paths


def _model(path):
    with h5py.File(path, "r") as handle:
        return handle["w"][...], handle["b"][...], dict(handle.attrs)


def _assert_same_model(reference, other, rtol):
    W0, b0, _ = _model(reference)
    W1, b1, attrs = _model(other)
    assert W1.shape == W0.shape == (D, K) and b1.shape == b0.shape == (K,)
    scale = max(1.0, np.abs(W0).max())
    assert np.abs(W1 - W0).max() <= rtol * scale and np.abs(b1 - b0).max() <= rtol * scale, (W1 - W0, b1 - b0)
    assert attrs["replicas_identical"] and attrs["loss"] == "multinomial" and attrs["n_classes"] == K
    return attrs


def _expected_bytes(grid):
    """Bytes rank 0 (the largest blocks) passes to reductions per gd iteration with standardisation: the scores
    ``n_p K`` (float64) over the row group, the gradient block ``d_q K`` over the column group, ``K + 2``
    scalars and the gradient norm's dot over all ranks, and the standardisation's shift ``μᵀW`` (K numbers) in
    the evaluation and in the per-step replica check."""
    rows, cols = grid
    return 8 * ((cols > 1) * math.ceil(N / rows) * K + (rows > 1) * math.ceil(D / cols) * K + (K + 2) + 1 + 2 * K)


def _runs(folder, paths, ranks):
    out = folder / f"r{ranks}"
    out.mkdir()
    modes = {"data": ["--mode", "data"], **{grid: ["--mode", "hybrid", "--grid", grid] for grid in GRIDS[ranks]}}
    modes["feature"] = ["--mode", "feature"]
    runs = []
    for variant, (data, options) in VARIANTS.items():
        runs += [{"name": f"{variant}-{mode}", "args": ["train", paths[data], "--out", out / f"{variant}-{mode}.h5",
                                                        *TIGHT, *extra, *options]}
                 for mode, extra in modes.items()]
    runs += [{"name": f"gd-{mode}", "args": ["train", paths["weighted"], "--out", out / f"gd-{mode}.h5", *GD, *extra]}
             for mode, extra in modes.items()]
    runs.append({"name": "sgd", "args": ["train", paths["plain"], "--out", out / "sgd.h5", *TIGHT, "--mode",
                                         "feature", "--optimizer", "sgd"]})
    runs.append({"name": "bad-labels", "args": ["train", paths["plain"], "--out", out / "bad.h5", *TIGHT, "--mode",
                                                "feature", "--classes", 2]})
    runs_path, results_path = folder / f"runs{ranks}.json", folder / f"results{ranks}.json"
    runs_path.write_text(json.dumps(runs, default=str))
    completed = run_python(ranks, CHECK, runs_path, results_path, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, list(modes), json.loads(results_path.read_text())


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3, 4])
def test_grid_multinomial_matches_data_mode(datasets, ranks):
    folder, paths = datasets
    out, modes, results = _runs(folder, paths, ranks)
    for name, result in results.items():
        if name not in ("sgd", "bad-labels"):
            assert result["error"] is None, (name, result)
    for variant in VARIANTS:
        reference = out / f"{variant}-data.h5"
        assert _model(reference)[2]["converged"], variant
        for mode in modes[1:]:
            attrs = _assert_same_model(reference, out / f"{variant}-{mode}.h5", rtol=1e-8)
            assert attrs["converged"], (variant, mode)
            shape = (1, ranks) if mode == "feature" else parse_grid(mode)
            assert f"{shape[0]}x{shape[1]} grid" in attrs["communicator"]
            if variant == "l1":
                assert np.array_equal(_model(reference)[0] == 0, _model(out / f"l1-{mode}.h5")[0] == 0)
    W_l1 = _model(out / "l1-data.h5")[0]
    assert 0 < np.count_nonzero(W_l1 == 0) < W_l1.size   # the L1 case has zeros to agree on
    gd_data = _model(out / "gd-data.h5")[2]
    for mode in modes[1:]:   # a fixed gd budget: the same iterates, the same step from the power iteration
        attrs = _assert_same_model(out / "gd-data.h5", out / f"gd-{mode}.h5", rtol=1e-10)
        assert attrs["lipschitz"] == pytest.approx(gd_data["lipschitz"], rel=1e-10)
        shape = (1, ranks) if mode == "feature" else parse_grid(mode)
        assert attrs["comm_bytes_per_iteration"] == _expected_bytes(shape), mode
    assert "--mode feature/hybrid" in results["sgd"]["error"] or "mini-batch" in results["sgd"]["error"]
    assert "labels are not 0 .. 1 (--classes 2)" in results["bad-labels"]["error"]
