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
    """``(w, b, attrs)`` of a model file (``b`` a float, or the K intercepts of a multinomial model)."""
    with h5py.File(path, "r") as handle:
        b = handle["b"][()]
        return handle["w"][...], float(b) if np.ndim(b) == 0 else np.asarray(b), dict(handle.attrs)


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


def write_csr_dataset(path, X, y=None, *, index_dtype=np.int32, sample_weight=None, **attrs):
    """Write a sparse dataset (``/X`` in anndata's CSR encoding) from anything SciPy turns into CSR."""
    import scipy.sparse  # noqa: PLC0415 - only the sparse tests need SciPy here

    X = scipy.sparse.csr_matrix(X)
    with h5py.File(path, "w") as handle:
        handle.attrs["pgd_format"] = 1
        for key, value in attrs.items():
            handle.attrs[key] = value
        group = handle.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = np.array(X.shape, dtype=np.int64)
        group.create_dataset("data", data=X.data)
        group.create_dataset("indices", data=X.indices.astype(index_dtype))
        group.create_dataset("indptr", data=X.indptr.astype(np.int64))
        if y is not None:
            handle.create_dataset("y", data=np.asarray(y))
        if sample_weight is not None:
            handle.create_dataset("sample_weight", data=np.asarray(sample_weight))
    return str(path)
