"""Reading one rank's rows of a sparse (CSR) dataset: its slice of indptr, indices, data, y and weights.

Only rows ``[start, stop)`` are read (``stop - start + 1`` indptr entries and that range's non-zeros);
the slab's indptr is rebased to start at 0. A rank with no rows gets valid empty arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgd.data.csr import CsrMeta
from pgd.data.csr_partition import csr_row_range_from_file
from pgd.data.format import open_h5
from pgd.errors import InputError


@dataclass
class CsrSlab:
    """Rows ``[start, stop)`` of a CSR dataset, global columns ``[0, d)``."""

    start: int
    stop: int
    d: int
    indptr: np.ndarray  # (m+1,) int64, indptr[0] == 0
    indices: np.ndarray  # (nnz,) int32 or int64
    data: np.ndarray  # (nnz,)
    y: np.ndarray | None  # (m,)
    sample_weight: np.ndarray | None  # (m,)

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the three CSR arrays."""
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def to_scipy(self):
        """A ``scipy.sparse.csr_matrix`` sharing this slab's arrays (no copy)."""
        from scipy.sparse import csr_matrix  # noqa: PLC0415 - SciPy only where a caller asks for a matrix
        return csr_matrix((self.data, self.indices, self.indptr), shape=(self.n_rows, self.d), copy=False)


def _vector(h5, key: str | None, path: str, n: int, start: int, stop: int, dtype, what: str):
    if not key or key not in h5:
        return None
    dset = h5[key]
    if getattr(dset, "shape", None) not in ((n,), (n, 1)) or dset.dtype.kind not in "biuf":
        raise InputError(f"{path}: /{key} ({what}) must hold {n} numbers, one per row")
    return np.ascontiguousarray(dset[start:stop].reshape(-1), dtype=dtype)


def read_csr_slab(meta: CsrMeta, start: int, stop: int, dtype=None, *, index_dtype=None,
                  weight_key: str | None = "sample_weight", locking: str = "best-effort") -> CsrSlab:
    """Read rows ``[start, stop)`` of a sparse dataset.

    Parameters
    ----------
    meta : CsrMeta
        From :func:`pgd.data.csr.inspect_csr`.
    start, stop : int
        ``0 <= start <= stop <= meta.n``.
    dtype : numpy dtype, optional
        Values, labels and weights (default: the stored value type).
    index_dtype : numpy dtype, optional
        Indices (default: the stored type).
    weight_key : str, optional
        Sample-weight dataset; absent in the file means no weights.

    Returns
    -------
    CsrSlab
    """
    if not 0 <= start <= stop <= meta.n:
        raise ValueError(f"row range [{start}, {stop}) is outside [0, {meta.n}] of {meta.path}")
    dtype = np.dtype(dtype or meta.dtype)
    index_dtype = np.dtype(index_dtype or meta.index_dtype)
    with open_h5(meta.path, locking) as h5:
        group = h5[meta.x_key]
        try:
            indptr = group["indptr"][start:stop + 1].astype(np.int64, copy=False)
            lo, hi = int(indptr[0]), int(indptr[-1])
            if np.any(np.diff(indptr) < 0) or not 0 <= lo <= hi <= meta.nnz:
                raise InputError(f"{meta.path}: /{meta.x_key}/indptr is not non-decreasing in rows {start}:{stop}")
            indices = group["indices"][lo:hi].astype(index_dtype, copy=False)
            data = group["data"][lo:hi].astype(dtype, copy=False)
            y = _vector(h5, meta.y_key, meta.path, meta.n, start, stop, dtype, "labels")
            weight = _vector(h5, weight_key, meta.path, meta.n, start, stop, dtype, "sample weights")
        except OSError as exc:
            raise InputError(f"cannot read rows {start}:{stop} of {meta.path}: {exc}") from None
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= meta.d):
        raise InputError(f"{meta.path}: /{meta.x_key}/indices in rows {start}:{stop} fall outside [0, {meta.d})")
    return CsrSlab(start, stop, meta.d, np.ascontiguousarray(indptr - lo), np.ascontiguousarray(indices),
                   np.ascontiguousarray(data), y, weight)


def rank_row_range(meta: CsrMeta, size: int, rank: int, locking: str = "best-effort") -> tuple[int, int]:
    """This rank's nnz-balanced rows, reading O(log n) elements of the file's indptr."""
    with open_h5(meta.path, locking) as h5:
        return csr_row_range_from_file(h5[meta.x_key]["indptr"], size, rank)


def read_rank_slab(meta: CsrMeta, size: int, rank: int, dtype=None, **options) -> CsrSlab:
    """:func:`read_csr_slab` of the rows :func:`rank_row_range` gives this rank."""
    start, stop = rank_row_range(meta, size, rank, options.get("locking", "best-effort"))
    return read_csr_slab(meta, start, stop, dtype, **options)
