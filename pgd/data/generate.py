"""Synthetic regression and binary-classification datasets, written block by block."""

from __future__ import annotations

import numpy as np

from pgd.data.slab import default_block_rows
from pgd.data.writer import atomic_h5_file, create_xy, float_dtype, summary
from pgd.errors import InputError

TASKS = ("regression", "binary")
DEFAULT_INTERCEPT = {"regression": 0.5, "binary": 0.0}
GENERATE_BLOCK_BYTES = 16 << 20  # float64 work arrays per block; keeps generation well under 200 MB


def generate_dataset(path, task: str, n: int, d: int, *, seed: int = 0, dtype="float32",
                     noise: float = 0.1, chunk_rows: int | None = None,
                     intercept: float | None = None, block_rows: int | None = None) -> dict:
    """Write a synthetic dataset with known true weights.

    Features are standard normal; the true weights are drawn from N(0, 1/d) so that the signal
    ``z = X @ w + b`` has unit variance around ``b``. For ``"regression"``,
    ``y = z + noise * N(0, 1)``; for ``"binary"``, ``y ~ Bernoulli(sigmoid(z))`` as 0.0/1.0 and
    ``noise`` is unused (labels are random already). The data are drawn from one random stream
    per quantity, so the file depends on ``seed`` and the shape only, not on ``block_rows``.

    Parameters
    ----------
    path : str or path-like
        Output file, replaced atomically.
    task : {"regression", "binary"}
    n, d : int
        Rows and features, both >= 1.
    seed : int
        Random seed.
    dtype : {"float32", "float64"}
        Stored type of X and y.
    noise : float
        Standard deviation of the regression noise.
    chunk_rows : int, optional
        Rows per HDF5 chunk (default: about 1 MiB chunks).
    intercept : float, optional
        True intercept ``b`` (default 0.5 for regression, 0.0 for binary).
    block_rows : int, optional
        Rows generated per block (default: about 64 MiB).

    Returns
    -------
    dict
        Summary: path, n, d, dtype, chunks, task, seed, true_b.

    Notes
    -----
    Root attributes: pgd_format, task, seed, noise, generator="pgd", true_w, true_b.
    """
    if task not in TASKS:
        raise InputError(f"task must be regression or binary, got {task!r}")
    if n < 1 or d < 1:
        raise InputError(f"n and d must be >= 1, got n={n}, d={d}")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    dtype = float_dtype(dtype)
    block = block_rows or default_block_rows(d, 8, GENERATE_BLOCK_BYTES)
    if block < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows}")
    b = float(DEFAULT_INTERCEPT[task] if intercept is None else intercept)
    weight_rng, x_rng, y_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    w = weight_rng.normal(0.0, 1.0 / np.sqrt(d), size=d)
    attrs = {"task": task, "seed": seed, "noise": float(noise), "generator": "pgd",
             "true_w": w, "true_b": b}
    with atomic_h5_file(path) as h5:
        x_dset, y_dset = create_xy(h5, n, d, dtype, chunk_rows, attrs)
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            x_block = x_rng.standard_normal((hi - lo, d), dtype=dtype)
            z = (x_block * w).sum(axis=1) + b  # per-row float64 sums: same for any block size
            if task == "regression":
                y_block = z + noise * y_rng.standard_normal(hi - lo, dtype=dtype)
            else:
                y_block = (y_rng.random(hi - lo) < 0.5 * (1.0 + np.tanh(0.5 * z))).astype(dtype)
            x_dset[lo:hi] = x_block
            y_dset[lo:hi] = y_block
        chunks = x_dset.chunks
    return summary(path, n, d, dtype, chunks, task, seed=seed, true_b=b)
