"""Contiguous row ranges of a CSR matrix balanced by work (non-zeros plus rows), a pure function of indptr.

The work of rows ``[0, i)`` is ``cost(i) = indptr[i] + i``: one unit per stored value and one per row, so
that rows without values (or a matrix with none) still split evenly. ``cost`` increases strictly, and rank
``r``'s first row is the first ``i`` with ``cost(i) >= floor(r W / size)``, ``W = nnz + n``. Every rank's
work is then at most ``W / size`` plus one row's work. :func:`csr_row_range_from_file` finds one rank's
range by bisection on the stored indptr, reading O(log n) elements, with the same answer.
"""

from __future__ import annotations

import numpy as np


def _check(size: int, rank: int | None = None) -> None:
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if rank is not None and not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")


def _targets(n: int, nnz: int, size: int) -> np.ndarray:
    """The work at which each rank's range starts (ranks 0..size), exact in integers."""
    total = nnz + n
    return np.array([r * total // size for r in range(size + 1)], dtype=np.int64)


def csr_row_bounds(indptr, size: int) -> np.ndarray:
    """Row boundaries ``b`` (``size + 1`` values): rank ``r`` owns rows ``[b[r], b[r+1])``.

    Parameters
    ----------
    indptr : array of int, (n+1,)
        A CSR row pointer (``indptr[0] == 0``, never decreasing).
    size : int
        Number of ranks, >= 1 (more ranks than rows is fine: some get no rows).

    Returns
    -------
    numpy.ndarray of int64
        ``b[0] == 0``, ``b[size] == n``, non-decreasing.
    """
    _check(size)
    indptr = np.asarray(indptr, dtype=np.int64)
    n = len(indptr) - 1
    if n < 0:
        raise ValueError("indptr needs at least one entry")
    cost = indptr + np.arange(n + 1, dtype=np.int64)
    return np.searchsorted(cost, _targets(n, int(indptr[-1]), size), side="left").astype(np.int64)


def csr_row_range(indptr, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s rows ``[start, stop)`` from :func:`csr_row_bounds`."""
    _check(size, rank)
    bounds = csr_row_bounds(indptr, size)
    return int(bounds[rank]), int(bounds[rank + 1])


def _first_at_least(indptr, n: int, target: int) -> int:
    """The first ``i`` in ``[0, n]`` with ``indptr[i] + i >= target``, by bisection (O(log n) reads)."""
    lo, hi = 0, n  # cost(n) = nnz + n >= target always
    while lo < hi:
        mid = (lo + hi) // 2
        if int(indptr[mid]) + mid >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def csr_row_range_from_file(indptr, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s rows, reading O(log n) elements of ``indptr`` (an h5py dataset or an array).

    Gives the same answer as :func:`csr_row_range` on the whole array.
    """
    _check(size, rank)
    n = int(indptr.shape[0]) - 1
    if n < 0:
        raise ValueError("indptr needs at least one entry")
    targets = _targets(n, int(indptr[n]), size)
    return _first_at_least(indptr, n, int(targets[rank])), _first_at_least(indptr, n, int(targets[rank + 1]))
