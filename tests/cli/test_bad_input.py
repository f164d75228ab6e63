"""Bad input under mpirun: one clear line from rank 0, non-zero exit on all ranks, no traceback, no hang."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from support.files import write_dataset
from support.mpi import run_pgd

pytestmark = pytest.mark.mpi

RANKS = 2


def _good(tmp_path, name="good.h5", n=200, d=3, labels01=True):
    rng = np.random.default_rng(0)
    y = (rng.random(n) > 0.5).astype(float) if labels01 else rng.standard_normal(n)
    return write_dataset(tmp_path / name, rng.standard_normal((n, d)), y)


def _make(tmp_path, case):
    """Build the input of one bad case; returns the pgd arguments and the expected message fragment."""
    rng = np.random.default_rng(1)
    path = tmp_path / "bad.h5"
    train = ["train", str(path), "--loss", "squared", "--out", str(tmp_path / "model.h5")]
    if case == "missing file":
        return train, "data file not found"
    if case == "not hdf5":
        path.write_text("x,y\n1,2\n")
        return train, "not an HDF5 file"
    if case == "missing X":
        with h5py.File(path, "w") as handle:
            handle["y"] = np.zeros(3)
        return train, "X"
    if case == "missing y":
        with h5py.File(path, "w") as handle:
            handle["X"] = np.zeros((3, 2))
        return train, "y"
    if case == "X not 2-D":
        write_dataset(path, np.zeros(5), np.zeros(5))
        return train, "2-D"
    if case == "y length":
        write_dataset(path, np.zeros((5, 2)), np.zeros(4))
        return train, "4"
    if case == "non-numeric":
        with h5py.File(path, "w") as handle:
            handle["X"] = np.array([["a", "b"], ["c", "d"]], dtype="S1")
            handle["y"] = np.zeros(2)
        return train, "numeric"
    if case in ("nan", "inf"):
        X = rng.standard_normal((200, 3))
        X[150, 1] = np.nan if case == "nan" else np.inf
        y = rng.standard_normal(200)
        y[160] = np.nan
        write_dataset(path, X, y)
        return train, "2 non-finite values (NaN or Inf) in the data; first in row 150"
    if case == "labels":
        write_dataset(path, rng.standard_normal((10, 2)), np.array([-1.0, 1.0] * 5))
        return train[:3] + ["logistic"] + train[4:], "5 labels are not 0 or 1"
    if case == "d = 0":
        write_dataset(path, np.zeros((4, 0)), np.zeros(4))
        return train, "no columns"
    if case == "n = 0":
        write_dataset(path, np.zeros((0, 3)), np.zeros(0))
        return train, "no rows"
    if case == "unwritable output":
        _good(tmp_path, "bad.h5")
        return train[:-1] + [str(tmp_path / "no-such-dir" / "model.h5")], "directory does not exist"
    if case == "output is a directory":
        _good(tmp_path, "bad.h5")
        return train[:-1] + [str(tmp_path)], "is a directory"
    if case == "unwritable metrics":
        _good(tmp_path, "bad.h5")
        return train + ["--metrics", str(tmp_path / "nope" / "m.jsonl")], "metrics file directory"
    if case == "bad option":
        _good(tmp_path, "bad.h5")
        return train + ["--lr", "-1"], "positive"
    raise AssertionError(case)


CASES = ["missing file", "not hdf5", "missing X", "missing y", "X not 2-D", "y length", "non-numeric", "nan",
         "inf", "labels", "d = 0", "n = 0", "unwritable output", "output is a directory", "unwritable metrics",
         "bad option"]


def _assert_one_clear_line(result, fragment):
    assert result.returncode == 2, (result.returncode, result.stderr)
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    error_lines = [line for line in result.stderr.splitlines() if "rror" in line and "pgd" in line
                   or line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr  # printed once, by rank 0
    assert fragment in error_lines[0], error_lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly_on_all_ranks(tmp_path, case):
    args, fragment = _make(tmp_path, case)
    result = run_pgd(RANKS, *args, timeout=60)
    _assert_one_clear_line(result, fragment)
    assert not (tmp_path / "model.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written output


def test_labels_pm1_hint(tmp_path):
    args, _ = _make(tmp_path, "labels")
    result = run_pgd(RANKS, *args, timeout=60)
    assert "--labels pm1" in result.stderr


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_model_dimension_mismatch(tmp_path, command):
    data3 = _good(tmp_path, "d3.h5", d=3)
    data4 = _good(tmp_path, "d4.h5", d=4)
    model = tmp_path / "m.h5"
    assert run_pgd(1, "train", data3, "--loss", "squared", "--max-iter", "3", "--quiet",
                   "--out", model).returncode == 0
    extra = ["--out", str(tmp_path / "p.h5")] if command == "predict" else []
    result = run_pgd(RANKS, command, model, data4, *extra, timeout=60)
    _assert_one_clear_line(result, "model")
    assert "3 features" in result.stderr and "4 columns" in result.stderr
    assert not (tmp_path / "p.h5").exists()
