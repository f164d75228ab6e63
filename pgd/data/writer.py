"""Writing dataset files: chunk-size default and atomic temp-file-then-rename output."""

from __future__ import annotations

import os

import h5py
import numpy as np

from pgd.data.format import DEFAULT_X_KEY, DEFAULT_Y_KEY, FORMAT_VERSION
from pgd.errors import InputError
from pgd.fileio import LIBVER, atomic_h5_file  # noqa: F401 - re-exported for generate/convert

CHUNK_BYTES = 1 << 20  # target size of one /X chunk
FLOAT_DTYPES = ("float32", "float64")


def default_chunk_rows(n: int, d: int, itemsize: int) -> int:
    """Rows per /X chunk so that a chunk is about 1 MiB, clamped to ``[1, n]``."""
    return max(1, min(max(n, 1), CHUNK_BYTES // max(1, d * itemsize)))


def float_dtype(dtype) -> np.dtype:
    """Validate an output dtype (float32 or float64)."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in FLOAT_DTYPES:
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def create_xy(h5: h5py.File, n: int, d: int, dtype: np.dtype, chunk_rows: int | None,
              attrs: dict, labels: bool = True) -> tuple[h5py.Dataset, h5py.Dataset | None]:
    """Create ``/X`` (n, d) and ``/y`` (n,) chunked by rows, and set the root attributes.

    Returns
    -------
    tuple
        ``(X, y)``, both of ``dtype``; y is None without ``labels`` (data to predict on).
    """
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(n, d, dtype.itemsize)
    elif chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    chunk_rows = min(int(chunk_rows), n)
    x = h5.create_dataset(DEFAULT_X_KEY, shape=(n, d), dtype=dtype, chunks=(chunk_rows, d))
    y = h5.create_dataset(DEFAULT_Y_KEY, shape=(n,), dtype=dtype, chunks=(chunk_rows,)) if labels else None
    h5.attrs["pgd_format"] = FORMAT_VERSION
    for key, value in attrs.items():
        if value is not None:
            h5.attrs[key] = value
    return x, y


def summary(path, n: int, d: int, dtype: np.dtype, chunks, task: str | None, **extra) -> dict:
    """The JSON-friendly summary that generate and convert return."""
    return {"path": os.fspath(path), "n": n, "d": d, "dtype": dtype.name,
            "chunks": list(chunks) if chunks else None, "task": task, **extra}
