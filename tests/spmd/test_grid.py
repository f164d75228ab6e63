"""Feature-parallel and hybrid grid modes: same weights as data mode, grids, zero blocks, chunking, rechunk."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from pgd.bench.modes import allreduce_estimate, mode_estimate
from pgd.data import inspect_dataset, read_rows
from pgd.data.rechunk import chunk_advice, column_read_amplification, rechunk_dataset
from pgd.errors import InputError
from pgd.strategies.grid import grid_shape, parse_grid
from support import script
from support.files import read_weights, write_dataset
from support.mpi import run_python

CHECK = script("mpi_grid_check.py")
N, D = 97, 13  # n not divisible by P, d not divisible by Q for every grid below
FIXED = ["--optimizer", "gd", "--max-iter", 25, "--tol", 0, "--rtol", 0, "--quiet", "--dtype", "float64"]
LOSS_ARGS = {"sq": ["--loss", "squared", "--lr", 0.3], "lg": ["--loss", "logistic", "--l2", 1e-3, "--lr", 2.0]}
GRIDS = {2: [None, "1x2"], 3: ["3x1", "1x3"], 4: [None, "4x1", "1x4", "2x2"]}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((N, D))
    w = rng.standard_normal(D)
    paths = {
        "sq": write_dataset(folder / "sq.h5", X, X @ w + 0.5 + 0.1 * rng.standard_normal(N)),
        "lg": write_dataset(folder / "lg.h5", X, (X @ w + 0.2 * rng.standard_normal(N) > 0).astype(float)),
        "tiny": write_dataset(folder / "tiny.h5", X[:3, :3], X[:3, :3] @ w[:3]),
    }
    return folder, paths


def _launch(ranks, folder, runs):
    runs_path, results_path = folder / f"runs{ranks}.json", folder / f"results{ranks}.json"
    runs_path.write_text(json.dumps(runs, default=str))
    completed = run_python(ranks, CHECK, runs_path, results_path, timeout=240)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(results_path.read_text())
    warnings, current = {}, None
    for line in completed.stderr.splitlines():
        if line.startswith("=== "):
            current = line[4:]
        elif "warning" in line and "not converged" not in line:  # fixed budgets end unconverged
            warnings.setdefault(current, []).append(line)
    return results, warnings


def _train(name, data, out, *args):
    return {"name": name, "args": ["train", data, "--out", out, *FIXED, *args]}


def _expected_bytes(grid, ranks):
    """Bytes rank 0 passes to reductions per evaluation (it holds the largest blocks); under
    standardisation a grid adds the scalar ``μ·w`` (the intercept's shift) to every evaluation and to the
    per-step replica check's ``full_params`` (``PGD_CHECK_REPLICAS``)."""
    if grid is None:
        return (D + 2) * 8
    rows, cols = grid
    return (cols > 1) * math.ceil(N / rows) * 8 + (rows > 1) * math.ceil(D / cols) * 8 + 32 + 16


def _assert_same_model(reference, other, rtol=1e-10):
    w0, b0, _ = read_weights(reference)
    w1, b1, attrs = read_weights(other)
    scale = max(1.0, np.abs(w0).max())
    assert np.abs(w1 - w0).max() <= rtol * scale and abs(b1 - b0) <= rtol * scale, (w1 - w0, b1 - b0)
    assert attrs["replicas_identical"]
    return attrs


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_grid_modes_match_data_mode(datasets, ranks):
    folder, paths = datasets
    out = folder / f"r{ranks}"
    out.mkdir()
    runs, expected = [], {}
    for loss in ("sq", "lg"):
        runs.append(_train(f"{loss}-data", paths[loss], out / f"{loss}-data.h5", *LOSS_ARGS[loss]))
        runs.append(_train(f"{loss}-feature", paths[loss], out / f"{loss}-feature.h5", "--mode", "feature",
                           *LOSS_ARGS[loss]))
        expected[f"{loss}-feature"] = (1, ranks)
        for grid in GRIDS[ranks]:
            extra = ["--grid", grid] if grid else []
            shape = parse_grid(grid) if grid else grid_shape("hybrid", None, ranks)
            runs.append(_train(f"{loss}-hybrid-{grid}", paths[loss], out / f"{loss}-hybrid-{grid}.h5",
                               "--mode", "hybrid", *extra, *LOSS_ARGS[loss]))
            expected[f"{loss}-hybrid-{grid}"] = shape
    if ranks == 4:
        auto = ["--loss", "squared", "--l2", 0.01, "--lr", "auto"]
        runs += [_train(f"auto-{mode}", paths["sq"], out / f"auto-{mode}.h5", "--mode", mode, *auto)
                 for mode in ("data", "feature", "hybrid")]
        runs += [_train("sq-hybrid-reduce-bcast", paths["sq"], out / "sq-hybrid-reduce-bcast.h5", "--mode",
                        "hybrid", "--comm", "reduce-bcast", *LOSS_ARGS["sq"]),
                 _train("tiny-data", paths["tiny"], out / "tiny-data.h5", *LOSS_ARGS["sq"]),
                 _train("tiny-feature", paths["tiny"], out / "tiny-feature.h5", "--mode", "feature",
                        *LOSS_ARGS["sq"]),
                 _train("tiny-hybrid-4x1", paths["tiny"], out / "tiny-hybrid-4x1.h5", "--mode", "hybrid",
                        "--grid", "4x1", *LOSS_ARGS["sq"]),
                 _train("bad-grid", paths["sq"], out / "x.h5", "--mode", "hybrid", "--grid", "3x3",
                        *LOSS_ARGS["sq"]),
                 _train("bad-feature-grid", paths["sq"], out / "x.h5", "--mode", "feature", "--grid", "2x2",
                        *LOSS_ARGS["sq"]),
                 _train("malformed-grid", paths["sq"], out / "x.h5", "--mode", "hybrid", "--grid", "two",
                        *LOSS_ARGS["sq"]),
                 {"name": "rechunk", "args": ["data", "rechunk", paths["sq"], out / "sq-rc.h5", "--chunks",
                                              "16,4", "--memory", 600]},
                 _train("rechunked-feature", out / "sq-rc.h5", out / "rechunked-feature.h5", "--mode",
                        "feature", *LOSS_ARGS["sq"])]
    results, warnings = _launch(ranks, folder, runs)
    for name, shape in expected.items():
        assert results[name]["error"] is None, results[name]
        attrs = _assert_same_model(out / f"{name[:2]}-data.h5", out / f"{name}.h5")
        assert f"{shape[0]}x{shape[1]} grid" in attrs["communicator"]
        assert attrs["comm_bytes_per_iteration"] == _expected_bytes(shape, ranks), name
    for loss in ("sq", "lg"):
        assert read_weights(out / f"{loss}-data.h5")[2]["comm_bytes_per_iteration"] == _expected_bytes(None, 0)
    # row-chunked (64, 13) files: column blocks of 7 (Q = 2) read < 2x the data used, blocks of 5 read 2.6x
    if ranks == 2:
        assert not warnings
    if ranks == 3:
        assert set(warnings) == {f"{loss}-{run}" for loss in ("sq", "lg") for run in ("feature", "hybrid-1x3")}
    if ranks != 4:
        return
    lipschitz = {mode: _assert_same_model(out / "auto-data.h5", out / f"auto-{mode}.h5")["lipschitz"]
                 for mode in ("feature", "hybrid")}
    assert lipschitz["feature"] == pytest.approx(read_weights(out / "auto-data.h5")[2]["lipschitz"], rel=1e-12)
    assert "reduce-bcast on a 2x2 grid" in _assert_same_model(out / "sq-data.h5",
                                                              out / "sq-hybrid-reduce-bcast.h5")["communicator"]
    # zero columns (feature: d = 3 over 4 ranks) and zero rows (4x1 grid: n = 3 over 4 row groups)
    _assert_same_model(out / "tiny-data.h5", out / "tiny-feature.h5")
    _assert_same_model(out / "tiny-data.h5", out / "tiny-hybrid-4x1.h5")
    assert results["bad-grid"]["error"] == "--grid 3x3 needs 9 ranks, but 4 are running"
    assert "use --mode hybrid" in results["bad-feature-grid"]["error"]
    assert "--grid must be PxQ" in results["malformed-grid"]["error"]
    # a row-chunked file warns in feature mode (4 blocks of <= 4 columns read whole 13-column chunks) ...
    assert any("pgd data rechunk" in line and "3.2x" in line for line in warnings["sq-feature"])
    assert "sq-hybrid-None" not in warnings  # 2x2: 7 of 13 columns, below 2x
    # ... and the rechunked copy does not, and gives the same model
    assert results["rechunk"]["error"] is None
    assert "rechunked-feature" not in warnings
    _assert_same_model(out / "sq-feature.h5", out / "rechunked-feature.h5", rtol=0)
    with h5py.File(out / "sq-rc.h5", "r") as handle:
        assert handle["X"].chunks == (16, 4)


def test_parse_grid_and_shapes():
    assert parse_grid("2x3") == (2, 3) and parse_grid("1X4") == (1, 4)
    for bad in ("2x", "x3", "0x4", "2x3x1", "abc"):
        with pytest.raises(InputError):
            parse_grid(bad)
    assert grid_shape("feature", None, 5) == (1, 5)
    assert grid_shape("data", None, 5) == (5, 1)
    assert grid_shape("hybrid", None, 4) == (2, 2)
    assert grid_shape("hybrid", "1x4", 4) == (1, 4)
    with pytest.raises(InputError, match="needs 6 ranks"):
        grid_shape("hybrid", "2x3", 4)


def test_column_read_amplification_and_advice():
    assert column_read_amplification(None, 100, 25) == 1.0
    assert column_read_amplification((64, 100), 100, 25) == 4.0
    assert column_read_amplification((64, 25), 100, 25) == 1.0
    assert column_read_amplification((64, 10), 100, 25) == 30 / 25
    assert chunk_advice((64, 100), 1000, 100, 60, "f.h5") is None
    advice = chunk_advice((64, 100), 1000, 100, 25, "f.h5")
    assert advice.startswith("pgd: warning: f.h5 is chunked (64, 100)") and "--chunks" in advice


def test_read_rows_column_range(tmp_path):
    X = np.arange(60, dtype=np.float32).reshape(10, 6)
    meta = inspect_dataset(write_dataset(tmp_path / "a.h5", X, np.arange(10.0)))
    for dtype in (np.float32, np.float64):  # direct read and converting read
        block, y = read_rows(meta, 2, 7, dtype, cols=(1, 4), block_rows=2)
        assert block.dtype == dtype and np.array_equal(block, X[2:7, 1:4]) and np.array_equal(y, np.arange(2.0, 7))
    empty, y = read_rows(meta, 2, 7, np.float64, cols=(6, 6))
    assert empty.shape == (5, 0) and np.array_equal(y, np.arange(2.0, 7))
    with pytest.raises(ValueError):
        read_rows(meta, 0, 1, np.float64, cols=(3, 7))


def test_rechunk_round_trip_with_small_memory(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((53, 29)).astype(np.float32)
    source = write_dataset(tmp_path / "in.h5", X, rng.standard_normal(53), task="regression")
    summary = rechunk_dataset(source, str(tmp_path / "out.h5"), "8,5", memory_bytes=400)
    assert summary["chunks"] == [8, 5] and summary["largest_tile_bytes"] <= 8 * 5 * 4 * 2
    with h5py.File(source, "r") as a, h5py.File(tmp_path / "out.h5", "r") as b:
        assert b["X"].chunks == (8, 5) and np.array_equal(a["X"][...], b["X"][...])
        assert np.array_equal(a["y"][...], b["y"][...]) and b.attrs["task"] == "regression"
    assert rechunk_dataset(source, str(tmp_path / "big.h5"), "1000,1000")["chunks"] == [53, 29]
    with pytest.raises(InputError, match="R,C"):
        rechunk_dataset(source, str(tmp_path / "bad.h5"), "8")


def test_alpha_beta_estimates():
    assert allreduce_estimate(1e-6, 1e-9, 1, 10**6) == 0.0
    assert allreduce_estimate(1e-6, 1e-9, 4, 1000) == pytest.approx(2e-6 + 1.5e-6)
    seconds, nbytes = mode_estimate((4, 1), 1000, 100, 8, 1e-6, 1e-9)
    assert nbytes == 102 * 8 and seconds == pytest.approx(allreduce_estimate(1e-6, 1e-9, 4, 816))
    seconds, nbytes = mode_estimate((1, 4), 1000, 100, 8, 1e-6, 1e-9)
    assert nbytes == 8000 + 24 + 8  # partial predictions, scalars and the norm; no gradient reduction


def test_grid_objective_refuses_unknown_needs_in_one_line():
    from pgd.strategies.grid import GridObjective

    objective = GridObjective.__new__(GridObjective)
    assert getattr(objective, "local", None) is None  # probes still work
    with pytest.raises(InputError, match="needs objective.local, which --mode feature/hybrid"):
        objective.local.loss_gradient  # noqa: B018
