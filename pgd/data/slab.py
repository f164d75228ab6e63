"""Reading contiguous row slabs of a dataset with bounded extra memory.

Conventions
-----------
Rows ``[start, stop)`` are global row indices; returned arrays are C-contiguous, X of shape
``(stop - start, d)`` and y of shape ``(stop - start,)``, in the requested dtype.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pgd.data.format import DatasetMeta, open_h5
from pgd.errors import InputError

BLOCK_BYTES = 64 << 20  # default size of one read/convert block
_SCAN_BYTES = 8 << 20  # block size for the boolean temporaries of count_nonfinite


def default_block_rows(d: int, itemsize: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows in a block of about ``block_bytes`` bytes (at least 1)."""
    return max(1, block_bytes // max(1, d * itemsize))


def _check_range(meta: DatasetMeta, start: int, stop: int) -> None:
    if not 0 <= start <= stop <= meta.n:
        raise ValueError(f"row range [{start}, {stop}) is outside [0, {meta.n}] of {meta.path}")


def _block_rows(meta: DatasetMeta, dtype: np.dtype, block_rows: int | None) -> int:
    if block_rows is None:
        return default_block_rows(meta.d, max(dtype.itemsize, meta.dtype.itemsize))
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    return int(block_rows)


def _output(out, shape: tuple, dtype: np.dtype, name: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous {dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def _copy_rows(dset, start: int, stop: int, out: np.ndarray, block_rows: int, cols=None) -> None:
    """Copy ``dset[start:stop]`` (only columns ``cols = (c0, c1)`` if given) into ``out``, converting one
    block at a time."""
    columns = np.s_[:] if cols is None else np.s_[cols[0]:cols[1]]
    if dset.ndim == 2 and out.ndim == 1:  # labels stored as a column vector (n, 1)
        out = out.reshape(-1, 1)
    if dset.dtype == out.dtype:
        source = np.s_[start:stop] if cols is None else np.s_[start:stop, columns]
        dset.read_direct(out, source_sel=source, dest_sel=np.s_[0:stop - start])
        return
    for a in range(start, stop, block_rows):
        b = min(a + block_rows, stop)
        out[a - start:b - start] = dset[a:b] if cols is None else dset[a:b, columns]


def read_rows(meta: DatasetMeta, start: int, stop: int, dtype, *, x_out=None, y_out=None,
              block_rows: int | None = None, locking: str = "best-effort", cols=None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read rows ``[start, stop)`` of X (and y when ``meta.y_key``) as ``dtype``.

    Parameters
    ----------
    meta : DatasetMeta
        From :func:`pgd.data.inspect_dataset`.
    start, stop : int
        Global row range, ``0 <= start <= stop <= meta.n``.
    dtype : numpy dtype
        Output dtype; other stored types are converted block by block.
    x_out, y_out : numpy.ndarray, optional
        Preallocated C-contiguous outputs of the right shape and dtype.
    block_rows : int, optional
        Rows per conversion block (default: about 64 MiB).
    locking : str
        See :func:`pgd.data.open_h5`.
    cols : tuple of int, optional
        Column range ``(c0, c1)`` of X to read (feature-parallel blocks); all columns by default.

    Returns
    -------
    tuple
        ``(X, y)``; y is None when the dataset has no labels.
    """
    _check_range(meta, start, stop)
    if cols is not None and not 0 <= cols[0] <= cols[1] <= meta.d:
        raise ValueError(f"column range {tuple(cols)} is outside [0, {meta.d}] of {meta.path}")
    dtype = np.dtype(dtype)
    rows = stop - start
    width = meta.d if cols is None else cols[1] - cols[0]
    x_out = _output(x_out, (rows, width), dtype, "x_out")
    y_out = _output(y_out, (rows,), dtype, "y_out") if meta.y_key else None
    if rows == 0:
        return x_out, y_out
    block = _block_rows(meta, dtype, block_rows)
    with open_h5(meta.path, locking) as h5:
        try:
            if width:
                _copy_rows(h5[meta.x_key], start, stop, x_out, block, cols)
            if y_out is not None:
                _copy_rows(h5[meta.y_key], start, stop, y_out, block)
        except (OSError, KeyError) as exc:
            raise InputError(f"cannot read rows {start}:{stop} of {meta.path}: {exc}") from None
    return x_out, y_out


def read_weights(path: str, key: str | None, n: int, start: int, stop: int, dtype, *,
                 locking: str = "best-effort") -> np.ndarray | None:
    """Rows ``[start, stop)`` of the sample-weight dataset ``key`` as ``dtype``, or None when the file has
    no such dataset (or ``key`` is None).

    Raises
    ------
    InputError
        When the dataset is not a numeric vector of ``n`` values (``(n, 1)`` is accepted).
    """
    if not key:
        return None
    with open_h5(path, locking) as h5:
        if key not in h5:
            return None
        dset = h5[key]
        shape = getattr(dset, "shape", None)
        if shape not in ((n,), (n, 1)) or dset.dtype.kind not in "biuf":
            raise InputError(f"{path}: /{key} (sample weights) must hold {n} numbers, one per row; found "
                             f"{'a group' if shape is None else f'shape {shape} of {dset.dtype}'}")
        try:
            values = dset[start:stop]
        except OSError as exc:
            raise InputError(f"cannot read rows {start}:{stop} of /{key} in {path}: {exc}") from None
    return np.ascontiguousarray(values.reshape(-1), dtype=dtype)


def iter_row_blocks(meta: DatasetMeta, start: int, stop: int, block_rows: int | None,
                    dtype=None, locking: str = "best-effort"
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield ``(row_offset, X_block, y_block)`` over rows ``[start, stop)``, one block at a time.

    ``row_offset`` is the global index of the block's first row; ``dtype=None`` keeps the stored
    types. The file stays open while the generator runs.
    """
    _check_range(meta, start, stop)
    dtype = np.dtype(dtype) if dtype is not None else None
    block = _block_rows(meta, dtype or meta.dtype, block_rows)
    with open_h5(meta.path, locking) as h5:
        x = h5[meta.x_key]
        y = h5[meta.y_key] if meta.y_key else None
        for a in range(start, stop, block):
            b = min(a + block, stop)
            try:
                x_block, y_block = x[a:b], (y[a:b].reshape(-1) if y is not None else None)
            except OSError as exc:
                raise InputError(f"cannot read rows {a}:{b} of {meta.path}: {exc}") from None
            if dtype is not None:
                x_block = x_block.astype(dtype, copy=False)
                y_block = y_block.astype(dtype, copy=False) if y_block is not None else None
            yield a, x_block, y_block


def _nonfinite_rows(a, block_rows: int) -> tuple[int, int]:
    """Non-finite count and first bad row of a 1-D or 2-D array, scanned by row blocks."""
    if a is None or a.dtype.kind not in "fc" or a.shape[0] == 0:
        return 0, -1
    count, first = 0, -1
    for lo in range(0, a.shape[0], block_rows):
        bad = ~np.isfinite(a[lo:lo + block_rows])
        block_count = int(bad.sum())
        if block_count and first < 0:
            bad_rows = bad.reshape(bad.shape[0], -1).any(axis=1)
            first = lo + int(bad_rows.argmax())
        count += block_count
    return count, first


def count_nonfinite(X, y=None) -> tuple[int, int]:
    """Count NaN/Inf values in X and y together and find the first row holding one.

    Parameters
    ----------
    X : array, shape (m, d)
    y : array, shape (m,), optional

    Returns
    -------
    tuple of int
        ``(count, first_row)`` with ``first_row`` a local row index, -1 when all values are finite.
    """
    d = X.shape[1] if X.ndim == 2 else 1
    x_count, x_first = _nonfinite_rows(X, default_block_rows(d, 1, _SCAN_BYTES))
    y_count, y_first = _nonfinite_rows(y, default_block_rows(1, 1, _SCAN_BYTES))
    firsts = [r for r in (x_first, y_first) if r >= 0]
    return x_count + y_count, min(firsts, default=-1)
