"""Writing sparse (CSR) dataset files row block by row block, with bounded memory.

A :class:`CsrWriter` appends blocks of rows to ``/X`` (anndata's CSR encoding, see :mod:`pgd.data.csr`),
``/y`` and ``/sample_weight`` of an open HDF5 file. When the final row and non-zero counts are known up
front (``n`` and ``nnz``), the datasets are contiguous and allocated at creation, so the file's bytes
depend only on its content, not on how the rows were cut into blocks (parallel conversion relies on this);
otherwise they are chunked and grow. :func:`csr_output` wraps a writer in an atomic output file.
"""

from __future__ import annotations

import contextlib
import os

import h5py
import numpy as np

from pgd.data.csr import index_dtype_for, write_csr_attrs
from pgd.data.format import DEFAULT_X_KEY, DEFAULT_Y_KEY, FORMAT_VERSION
from pgd.data.writer import float_dtype
from pgd.errors import InputError
from pgd.fileio import atomic_h5_file

WEIGHT_KEY = "sample_weight"
GROW_CHUNK = 1 << 16  # elements per chunk of a growing dataset


def _early_dcpl() -> h5py.h5p.PropDCID:
    """A creation property list that allocates a contiguous dataset's space at creation."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


class CsrWriter:
    """Append rows to a CSR dataset in an open, writable HDF5 file.

    Parameters
    ----------
    h5 : h5py.File
        Open for writing (e.g. from :func:`pgd.fileio.atomic_h5_file`).
    d : int
        Number of features; every index must lie in ``[0, d)``.
    dtype : {"float32", "float64"}
        Stored type of the values, labels and weights.
    n, nnz : int, optional
        Final row and non-zero counts when known: fixed-size, contiguous datasets (checked at
        :meth:`finish`). Otherwise the datasets grow by chunks.
    index_dtype : numpy dtype, optional
        int32 or int64; default :func:`pgd.data.csr.index_dtype_for` ``(d)`` (int64 can be forced).
    labels, weights : bool
        Whether ``/y`` and ``/sample_weight`` are written.
    label_dtype, weight_dtype : numpy dtype, optional
        Their stored types (default ``dtype``).
    attrs : dict, optional
        Root attributes (``task``, ``source``, ...); None values are skipped.
    feature_names : sequence of str, optional
        Written as ``/feature_names``.
    """

    def __init__(self, h5: h5py.File, d: int, dtype="float32", *, n: int | None = None, nnz: int | None = None,
                 index_dtype=None, labels: bool = True, weights: bool = False, attrs: dict | None = None,
                 feature_names=None, label_dtype=None, weight_dtype=None):
        if d < 0:
            raise InputError(f"the number of features must be >= 0, got {d}")
        self.h5, self.d, self.dtype = h5, int(d), float_dtype(dtype)
        self.index_dtype = np.dtype(index_dtype) if index_dtype is not None else index_dtype_for(d)
        if self.index_dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise InputError(f"index dtype must be int32 or int64, got {self.index_dtype}")
        if self.index_dtype.itemsize == 4 and d > 2**31:
            raise InputError(f"{d} features need int64 indices")
        self.fixed = n is not None and nnz is not None
        self.n, self.nnz = (int(n), int(nnz)) if self.fixed else (None, None)
        self.rows, self.offset = 0, 0
        group = h5.create_group(DEFAULT_X_KEY)
        self.group = group
        self.indptr = self._create(group, "indptr", (self.n or 0) + 1, np.int64)
        self.indptr[0] = 0
        self.indices = self._create(group, "indices", self.nnz or 0, self.index_dtype)
        self.data = self._create(group, "data", self.nnz or 0, self.dtype)
        self.y = self._create(h5, DEFAULT_Y_KEY, self.n or 0, label_dtype or self.dtype) if labels else None
        self.weight = self._create(h5, WEIGHT_KEY, self.n or 0, weight_dtype or self.dtype) if weights else None
        if feature_names is not None:
            names = [str(name) for name in feature_names]
            if len(names) != d:
                raise InputError(f"{len(names)} feature names for {d} features")
            h5.create_dataset("feature_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        h5.attrs["pgd_format"] = FORMAT_VERSION
        for key, value in (attrs or {}).items():
            if value is not None:
                h5.attrs[key] = value

    def _create(self, parent: h5py.Group, name: str, length: int, dtype) -> h5py.Dataset:
        if self.fixed:
            return parent.create_dataset(name, shape=(length,), dtype=dtype, dcpl=_early_dcpl())
        return parent.create_dataset(name, shape=(length,), maxshape=(None,), dtype=dtype,
                                     chunks=(GROW_CHUNK,))

    def _put(self, dset: h5py.Dataset, start: int, values: np.ndarray) -> None:
        stop = start + len(values)
        if not self.fixed and dset.shape[0] < stop:
            dset.resize((stop,))
        if len(values):
            dset[start:stop] = values

    def append(self, row_nnz, indices, data, y=None, sample_weight=None) -> None:
        """Append a block of ``m = len(row_nnz)`` rows.

        Parameters
        ----------
        row_nnz : array of int, (m,)
            Non-zeros of each row.
        indices, data : arrays, (sum(row_nnz),)
            Column indices (0-based) and values, row after row.
        y, sample_weight : arrays, (m,), optional
            Required when the writer has labels / weights.
        """
        row_nnz = np.asarray(row_nnz, dtype=np.int64)
        indices, data = np.asarray(indices), np.asarray(data)
        m, k = len(row_nnz), int(row_nnz.sum())
        if len(indices) != k or len(data) != k:
            raise ValueError(f"row_nnz sums to {k} but indices/data have {len(indices)}/{len(data)} entries")
        if k and (indices.min() < 0 or indices.max() >= self.d):
            bad = indices[(indices < 0) | (indices >= self.d)][0]
            raise InputError(f"feature index {int(bad)} is outside [0, {self.d}) ({self.d} features)")
        if self.fixed and (self.rows + m > self.n or self.offset + k > self.nnz):
            raise ValueError("more rows or non-zeros appended than announced")
        self._put(self.indptr, self.rows + 1, self.offset + np.cumsum(row_nnz))
        self._put(self.indices, self.offset, indices.astype(self.index_dtype, copy=False))
        self._put(self.data, self.offset, data.astype(self.dtype, copy=False))
        for dset, values, name in ((self.y, y, "y"), (self.weight, sample_weight, "sample_weight")):
            if dset is not None:
                if values is None or len(values) != m:
                    raise ValueError(f"{name} must have one value per appended row")
                self._put(dset, self.rows, np.asarray(values).reshape(-1).astype(dset.dtype, copy=False))
        self.rows += m
        self.offset += k

    def append_csr(self, matrix, y=None, sample_weight=None) -> None:
        """Append the rows of a SciPy CSR matrix (or anything with ``indptr``, ``indices``, ``data``)."""
        self.append(np.diff(matrix.indptr), matrix.indices, matrix.data, y, sample_weight)

    def finish(self) -> dict:
        """Write the shape attributes and return ``{n, d, nnz, dtype, index_dtype}``.

        Raises
        ------
        ValueError
            When a fixed-size writer received fewer rows or non-zeros than announced.
        """
        if self.fixed and (self.rows, self.offset) != (self.n, self.nnz):
            raise ValueError(f"announced {self.n} rows / {self.nnz} non-zeros, appended {self.rows} / {self.offset}")
        write_csr_attrs(self.group, self.rows, self.d)
        return {"n": self.rows, "d": self.d, "nnz": self.offset, "dtype": self.dtype.name,
                "index_dtype": self.index_dtype.name}


@contextlib.contextmanager
def csr_output(path, d: int, dtype="float32", **options):
    """Yield a :class:`CsrWriter` on a new file that appears at ``path`` only when the block succeeds.

    ``options`` are :class:`CsrWriter`'s keyword arguments. :meth:`CsrWriter.finish` runs at the end;
    its result is stored in the writer's ``summary`` attribute.
    """
    with atomic_h5_file(os.fspath(path)) as h5:
        writer = CsrWriter(h5, d, dtype, **options)
        yield writer
        writer.summary = writer.finish()
