"""Small files for tests: datasets in pgd's format, model weights, directory snapshots, one-line error checks."""

from __future__ import annotations

import os

import h5py
import numpy as np


def write_dataset(path, X, y=None, **attrs):
    """Write an HDF5 dataset in pgd's format (X chunked by rows)."""
    with h5py.File(path, "w") as handle:
        handle.attrs["pgd_format"] = 1
        for key, value in attrs.items():
            handle.attrs[key] = value
        X = np.asarray(X)
        handle.create_dataset("X", data=X, chunks=(max(1, min(len(X), 64)),) + X.shape[1:]
                              if X.ndim == 2 and X.size else None)
        if y is not None:
            handle.create_dataset("y", data=np.asarray(y))
    return str(path)


def read_weights(path):
    """``(w, b, attrs)`` of a model file."""
    with h5py.File(path, "r") as handle:
        return handle["w"][...], float(handle["b"][()]), dict(handle.attrs)


def write_loss_datasets(path, n: int, d: int, seed: int, intercept: float = 0.0) -> dict:
    """A regression and a binary dataset on one random ``X`` (n x d): ``{"squared": path, "logistic": path}``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    true = rng.standard_normal(d)
    return {"squared": write_dataset(path / "reg.h5", X, X @ true + intercept + 0.1 * rng.standard_normal(n)),
            "logistic": write_dataset(path / "bin.h5", X, (X @ true + rng.logistic(size=n) > 0).astype(float))}


def snapshot(directory) -> dict:
    """``{name: bytes}`` of every file under ``directory`` (to prove that nothing was changed)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


def assert_one_error_line(result: dict, fragment: str, code: int = 2) -> str:
    """Every rank exited with ``code``; rank 0 alone printed, and one ``pgd: error:`` (or usage) line that holds
    ``fragment``; no traceback. Returns the line."""
    assert result["codes_by_rank"] == [code] * len(result["codes_by_rank"]), result["stderr"]
    assert not any(result["stderr_by_rank"][1:]), result["stderr_by_rank"]
    lines = [line for line in result["stderr"].splitlines() if line.startswith(("pgd: error", "Error:"))]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    assert fragment in lines[0], lines[0]
    return lines[0]
