"""Synthetic text-like sparse datasets (power-law feature frequencies), written block by block as CSR.

Each row draws ``nnz_per_row`` feature ids from a Zipf-like law ``P(rank k) ~ 1 / (k + 1) ** power`` over a
fixed random relabelling of the ``d`` features (so frequent features are spread over the index range),
drops repeats (so frequent features make rows a little shorter, as in text), and gets positive values
scaled to a unit row norm (tf-idf-like). Labels come from true weights ``w ~ N(0, 1)``: ``z = x . w + b``,
``y = z + noise N(0, 1)`` (regression) or ``y ~ Bernoulli(sigmoid(z))`` (binary). Each quantity has its
own random stream, so the file depends on the seed and the shape only, never on the block size.
"""

from __future__ import annotations

import numpy as np

from pgd.data.csr_writer import csr_output
from pgd.errors import InputError

TASKS = ("regression", "binary")
BLOCK_VALUES = 1 << 20  # draws per block: temporaries stay under about 100 MB


def _zipf_cdf(d: int, power: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, d + 1, dtype=np.float64) ** power
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _block_rows(ids: np.ndarray, rows: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted, de-duplicated ids of each row: ``(row_nnz, indices, keep)``, ``keep`` the (rows, k) mask
    of the draws kept."""
    ids = np.sort(ids.reshape(rows, k), axis=1)
    keep = np.ones_like(ids, dtype=bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return keep.sum(axis=1), ids[keep], keep


def generate_sparse(path, n: int, d: int, nnz_per_row: int, *, task: str = "binary", seed: int = 0,
                    power: float = 1.0, dtype="float32", noise: float = 0.1, intercept: float = 0.0,
                    index_dtype=None, block_rows: int | None = None) -> dict:
    """Write a text-like sparse dataset (CSR) with known true weights, streaming in blocks.

    Parameters
    ----------
    path : str or path-like
        Output file, replaced atomically.
    n, d : int
        Rows and features (>= 1).
    nnz_per_row : int
        Draws per row (1 <= nnz_per_row <= d); repeats are dropped, so rows hold at most this many.
    task : {"regression", "binary"}
    seed : int
    power : float
        Zipf exponent of the feature frequencies (0: uniform; 1: text-like).
    dtype : {"float32", "float64"}
    noise : float
        Regression noise standard deviation.
    intercept : float
        True intercept ``b``.
    index_dtype : int32 or int64, optional
        Default int32 while ``d < 2**31`` (int64 can be forced, e.g. for tests).
    block_rows : int, optional
        Rows per block (default: about 4 M draws).

    Returns
    -------
    dict
        ``path, n, d, nnz, dtype, index_dtype, task, seed, power, true_b``.
    """
    if task not in TASKS:
        raise InputError(f"task must be regression or binary, got {task!r}")
    if n < 1 or d < 1 or not 1 <= nnz_per_row <= d:
        raise InputError(f"need n >= 1, d >= 1 and 1 <= nnz_per_row <= d, got n={n}, d={d}, "
                         f"nnz_per_row={nnz_per_row}")
    if power < 0 or noise < 0:
        raise InputError(f"power and noise must be >= 0, got {power} and {noise}")
    block = block_rows or max(1, BLOCK_VALUES // nnz_per_row)
    if block < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows}")
    streams = np.random.SeedSequence(seed).spawn(5)
    w_rng, relabel_rng, id_rng, value_rng, y_rng = (np.random.default_rng(s) for s in streams)
    w = w_rng.standard_normal(d)
    relabel = relabel_rng.permutation(d)
    cdf = _zipf_cdf(d, power)
    attrs = {"task": task, "seed": seed, "generator": "pgd sparse", "power": float(power), "noise": float(noise),
             "true_b": float(intercept), "nnz_per_row": nnz_per_row}
    with csr_output(path, d, dtype, index_dtype=index_dtype, attrs=attrs) as writer:
        for lo in range(0, n, block):
            rows = min(block, n - lo)
            ids = relabel[np.minimum(np.searchsorted(cdf, id_rng.random(rows * nnz_per_row)), d - 1)]
            row_nnz, indices, keep = _block_rows(ids, rows, nnz_per_row)
            values = 0.1 + value_rng.random((rows, nnz_per_row))[keep]
            row_of = np.repeat(np.arange(rows), row_nnz)
            norms = np.sqrt(np.bincount(row_of, weights=values * values, minlength=rows))
            values /= norms[row_of]
            z = np.bincount(row_of, weights=values * w[indices], minlength=rows) + intercept
            if task == "regression":
                y = z + noise * y_rng.standard_normal(rows)
            else:
                y = (y_rng.random(rows) < 0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float64)
            writer.append(row_nnz, indices, values, y)
    return {"path": str(path), **writer.summary, "task": task, "seed": seed, "power": float(power),
            "true_b": float(intercept)}
