"""The sparse (CSR) dataset format: anndata's on-disk ``csr_matrix`` encoding in HDF5.

Conventions
-----------
A sparse dataset stores ``/X`` as a group with the attributes ``encoding-type = "csr_matrix"``,
``encoding-version = "0.1.0"`` and ``shape = (n, d)``, holding three datasets:

- ``data``    (nnz,)  float32 or float64, the stored values row after row;
- ``indices`` (nnz,)  int32 while ``d < 2**31``, int64 beyond (the column of each value);
- ``indptr``  (n+1,) int64, row ``i`` holds ``data[indptr[i]:indptr[i+1]]``.

Everything else is as in a dense file (:mod:`pgd.data.format`): ``/y`` (n,), optional ``/sample_weight``
and ``/feature_names``, root attributes ``pgd_format = 1`` and optionally ``task``. Nothing here reads a
whole array: :func:`inspect_csr` reads a handful of elements, :func:`scan_csr` streams in blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from pgd.data.format import DEFAULT_X_KEY, DEFAULT_Y_KEY, _read_attrs, check_not_empty, open_h5
from pgd.errors import InputError

ENCODING_TYPE = "csr_matrix"
ENCODING_VERSION = "0.1.0"
INT32_LIMIT = 2**31  # indices fit int32 while d < 2**31
SCAN_BLOCK = 1 << 22  # elements per block when scanning indptr / indices


def index_dtype_for(d: int) -> np.dtype:
    """The stored index type for ``d`` columns: int32 while ``d < 2**31``, else int64."""
    return np.dtype(np.int32 if d < INT32_LIMIT else np.int64)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_csr_group(obj) -> bool:
    """True when ``obj`` (an h5py object) is a group in anndata's CSR encoding."""
    return isinstance(obj, h5py.Group) and _text(obj.attrs.get("encoding-type", "")) == ENCODING_TYPE


def is_csr_file(path, x_key: str = DEFAULT_X_KEY, locking: str = "best-effort") -> bool:
    """True when ``/x_key`` of the HDF5 file ``path`` is a CSR group (False for a dense dataset)."""
    with open_h5(path, locking) as h5:
        return is_csr_group(h5.get(x_key))


@dataclass(frozen=True)
class CsrMeta:
    """What :func:`inspect_csr` learned about a sparse dataset file (a few elements read)."""

    path: str
    x_key: str
    y_key: str | None
    n: int
    d: int
    nnz: int
    dtype: np.dtype
    index_dtype: np.dtype
    y_dtype: np.dtype | None
    task: str | None
    attrs: dict = field(default_factory=dict)
    sparse: bool = True

    @property
    def density(self) -> float:
        """nnz / (n d); 0 for an empty matrix."""
        return self.nnz / (self.n * self.d) if self.n and self.d else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of ``indptr``, ``indices`` and ``data`` on disk, uncompressed."""
        return 8 * (self.n + 1) + self.nnz * (self.index_dtype.itemsize + self.dtype.itemsize)


def _member(group: h5py.Group, path: str, x_key: str, name: str, kinds: str) -> h5py.Dataset:
    obj = group.get(name)
    if not isinstance(obj, h5py.Dataset) or obj.ndim != 1:
        raise InputError(f"{path}: /{x_key} is a csr_matrix group without a 1-D dataset '{name}'")
    if obj.dtype.kind not in kinds:
        want = "integers" if kinds == "iu" else "real numbers"
        raise InputError(f"{path}: /{x_key}/{name} has dtype {obj.dtype}; it must hold {want}")
    return obj


def _shape(group: h5py.Group, path: str, x_key: str) -> tuple[int, int]:
    try:
        shape = tuple(int(s) for s in np.asarray(group.attrs["shape"]).reshape(-1))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: /{x_key} is a csr_matrix group without a valid 'shape' attribute") from None
    if len(shape) != 2 or min(shape) < 0:
        raise InputError(f"{path}: /{x_key} shape attribute must be (rows, features), got {shape}")
    return shape


def _check_csr_group(group: h5py.Group, path: str, x_key: str) -> tuple[int, int, int, np.dtype, np.dtype]:
    """Shape, nnz and types of a CSR group, checking everything that costs a few element reads."""
    n, d = _shape(group, path, x_key)
    indptr = _member(group, path, x_key, "indptr", "iu")
    indices = _member(group, path, x_key, "indices", "iu")
    data = _member(group, path, x_key, "data", "biuf")
    nnz = int(data.shape[0])
    if indptr.shape[0] != n + 1:
        raise InputError(f"{path}: /{x_key}/indptr has {indptr.shape[0]} entries; shape {(n, d)} needs {n + 1}")
    if indices.shape[0] != nnz:
        raise InputError(f"{path}: /{x_key}/indices has {indices.shape[0]} entries but data has {nnz}")
    first, last = int(indptr[0]), int(indptr[n])
    if first != 0:
        raise InputError(f"{path}: /{x_key}/indptr must start at 0, starts at {first}")
    if last != nnz:
        raise InputError(f"{path}: /{x_key}/indptr ends at {last} but data has {nnz} values")
    if indices.dtype.itemsize < 8 and d > np.iinfo(indices.dtype).max + 1:
        raise InputError(f"{path}: /{x_key}/indices is {indices.dtype} but {d} features need int64 indices")
    return n, d, nnz, data.dtype, indices.dtype


def inspect_csr(path, x_key: str = DEFAULT_X_KEY, y_key: str | None = DEFAULT_Y_KEY,
                require_y: bool = True, locking: str = "best-effort") -> CsrMeta:
    """Validate the structure of a sparse dataset file and return its :class:`CsrMeta`.

    Reads the attributes, ``indptr[0]`` and ``indptr[n]`` only: O(1) whatever the file size. The full
    checks (indptr monotone, indices in range) are :func:`scan_csr`'s.

    Raises
    ------
    InputError
        One line: ``/x_key`` is not a CSR group, a member is missing or of the wrong type, lengths
        disagree, indptr does not start at 0 or end at nnz, labels of the wrong length, no rows/columns.
    """
    path = os.fspath(path)
    with open_h5(path, locking) as h5:
        group = h5.get(x_key)
        if not is_csr_group(group):
            raise InputError(f"{path}: /{x_key} is not a csr_matrix group (encoding-type attribute)")
        n, d, nnz, dtype, index_dtype = _check_csr_group(group, path, x_key)
        y_dtype = None
        if y_key is not None and (require_y or y_key in h5):
            y = h5.get(y_key)
            if not isinstance(y, h5py.Dataset):
                raise InputError(f"{path}: no dataset '{y_key}' (labels); choose another with --y-key")
            if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
                raise InputError(f"{path}: /{y_key} must be 1-D (or one column), got shape {y.shape}")
            if y.shape[0] != n:
                raise InputError(f"{path}: /{y_key} has {y.shape[0]} labels but /{x_key} has {n} rows")
            y_dtype = y.dtype
        else:
            y_key = None
        check_not_empty(path, x_key, n, d)
        attrs = _read_attrs(h5)
    task = attrs.get("task")
    return CsrMeta(path=path, x_key=x_key, y_key=y_key, n=n, d=d, nnz=nnz, dtype=dtype,
                   index_dtype=index_dtype, y_dtype=y_dtype, task=str(task) if task else None, attrs=attrs)


def _scan_indptr(indptr: h5py.Dataset, n: int, path: str, key: str, block: int) -> dict:
    """Per-row nnz statistics from indptr, checking that it never decreases."""
    low, high, empty = None, 0, 0
    for lo in range(0, n + 1, block):
        part = indptr[lo:min(lo + block + 1, n + 1)].astype(np.int64, copy=False)
        counts = np.diff(part)
        if counts.size and counts.min() < 0:
            row = lo + int(np.argmax(counts < 0))
            raise InputError(f"{path}: /{key}/indptr decreases at row {row} ({part[row - lo]} -> "
                             f"{part[row - lo + 1]}); it must never decrease")
        if counts.size:
            low = int(counts.min()) if low is None else min(low, int(counts.min()))
            high = max(high, int(counts.max()))
            empty += int(np.count_nonzero(counts == 0))
    return {"row_nnz_min": low or 0, "row_nnz_max": high, "empty_rows": empty}


def _scan_indices(indices: h5py.Dataset, data: h5py.Dataset, d: int, path: str, key: str, block: int) -> int:
    """Check every index is in ``[0, d)``; return the number of non-finite stored values."""
    nonfinite = 0
    for lo in range(0, indices.shape[0], block):
        part = indices[lo:lo + block]
        bad = (part < 0) | (part >= d)
        if bad.any():
            at = int(np.argmax(bad))
            raise InputError(f"{path}: /{key}/indices[{lo + at}] = {int(part[at])} is outside [0, {d}) "
                             f"(d = {d} features)")
        values = data[lo:lo + block]
        if values.dtype.kind == "f":
            nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
    return nonfinite


def scan_csr(meta: CsrMeta, block: int = SCAN_BLOCK, locking: str = "best-effort") -> dict:
    """Check a sparse file completely, streaming, and return what ``pgd data info`` reports.

    Parameters
    ----------
    meta : CsrMeta
        From :func:`inspect_csr`.
    block : int
        Elements read at a time (memory stays O(block)).

    Returns
    -------
    dict
        ``n, d, nnz, density, row_nnz_min, row_nnz_mean, row_nnz_max, empty_rows, nonfinite,
        index_dtype, index_bits, dtype, nbytes``.

    Raises
    ------
    InputError
        One line at the first defect: indptr decreasing, an index outside ``[0, d)``.
    """
    with open_h5(meta.path, locking) as h5:
        group = h5[meta.x_key]
        stats = _scan_indptr(group["indptr"], meta.n, meta.path, meta.x_key, block)
        nonfinite = _scan_indices(group["indices"], group["data"], meta.d, meta.path, meta.x_key, block)
    return {"n": meta.n, "d": meta.d, "nnz": meta.nnz, "density": meta.density, **stats,
            "row_nnz_mean": meta.nnz / meta.n if meta.n else 0.0, "nonfinite": nonfinite,
            "index_dtype": meta.index_dtype.name, "index_bits": 8 * meta.index_dtype.itemsize,
            "dtype": meta.dtype.name, "nbytes": meta.nbytes}


def format_csr_info(info: dict) -> str:
    """The sparse lines of ``pgd data info`` for a :func:`scan_csr` result."""
    return "\n".join([
        f"sparse CSR: {info['n']} rows x {info['d']} features, nnz {info['nnz']} "
        f"(density {info['density']:.3g}), {info['dtype']} values, {info['index_dtype']} indices",
        f"non-zeros per row: min {info['row_nnz_min']}, mean {info['row_nnz_mean']:.4g}, "
        f"max {info['row_nnz_max']}; empty rows {info['empty_rows']}",
    ])


def write_csr_attrs(group: h5py.Group, n: int, d: int) -> None:
    """Mark ``group`` as anndata's CSR encoding of an ``(n, d)`` matrix."""
    group.attrs["encoding-type"] = ENCODING_TYPE
    group.attrs["encoding-version"] = ENCODING_VERSION
    group.attrs["shape"] = np.array([n, d], dtype=np.int64)


__all__ = ["CsrMeta", "ENCODING_TYPE", "ENCODING_VERSION", "DEFAULT_Y_KEY", "format_csr_info",
           "index_dtype_for", "inspect_csr", "is_csr_file", "is_csr_group", "scan_csr", "write_csr_attrs"]
