"""Conversions between sparse (CSR) files and other forms, streaming with bounded memory.

- :func:`convert_npz`: SciPy's ``save_npz`` file (CSR, compressed or not) to a CSR dataset, reading the
  arrays inside the zip file block by block (CSC/COO files are loaded whole and converted).
- :func:`dense_to_csr` and :func:`csr_to_dense`: a dense pgd dataset to CSR and back, exactly (the
  stored values are copied, not recomputed), with labels, sample weights and attributes.

LIBSVM text is :mod:`pgd.data.libsvm_convert`'s.
"""

from __future__ import annotations

import os
import zipfile

import h5py
import numpy as np

from pgd.data.csr import inspect_csr
from pgd.data.csr_slab import read_csr_slab
from pgd.data.csr_writer import WEIGHT_KEY, csr_output
from pgd.data.format import inspect_dataset, open_h5
from pgd.data.slab import default_block_rows, iter_row_blocks, read_weights
from pgd.data.writer import atomic_h5_file, create_xy, float_dtype
from pgd.errors import InputError
from pgd.fileio import refuse_same_files

BLOCK_VALUES = 1 << 22  # non-zeros per block
_KEPT_ATTRS = ("task", "label_classes", "source", "source_format")


def _npy_member(archive: zipfile.ZipFile, name: str, src: str):
    """An open stream positioned at the data of ``name.npy`` inside ``archive``, and its (length, dtype)."""
    try:
        stream = archive.open(f"{name}.npy")
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(stream)
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{src} is not a SciPy sparse .npz file (member {name}.npy: {exc})") from None
    if dtype.hasobject or len(shape) > 1 or (fortran and len(shape) > 1):
        raise InputError(f"{src}: {name}.npy must be a 1-D numeric array")
    return stream, int(np.prod(shape)), dtype


def _read_exactly(stream, count: int, dtype: np.dtype, src: str) -> np.ndarray:
    raw = stream.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise InputError(f"{src} is truncated")
    return np.frombuffer(raw, dtype=dtype)


def _npz_header(archive: zipfile.ZipFile, src: str) -> tuple[str, tuple[int, int]]:
    names = set(archive.namelist())
    if not {"format.npy", "shape.npy"} <= names:
        raise InputError(f"{src} is not a SciPy sparse .npz file (scipy.sparse.save_npz writes format and shape)")
    with archive.open("format.npy") as handle:
        fmt = np.lib.format.read_array(handle, allow_pickle=False).item()
    with archive.open("shape.npy") as handle:
        shape = tuple(int(s) for s in np.lib.format.read_array(handle, allow_pickle=False))
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if len(shape) != 2:
        raise InputError(f"{src}: a sparse matrix must be 2-D, got shape {shape}")
    return fmt, shape


def _labels_for(labels, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.load(os.fspath(labels), allow_pickle=False) if isinstance(labels, (str, os.PathLike)) else labels
    y = np.asarray(y).reshape(-1)
    if y.shape != (n,) or y.dtype.kind not in "biuf":
        raise InputError(f"labels must be {n} numbers, one per row; got {y.dtype} of shape {y.shape}")
    return y


def _stream_csr_npz(archive, src: str, n: int, writer, y, block_values: int) -> None:
    indptr_stream, indptr_len, indptr_dtype = _npy_member(archive, "indptr", src)
    index_stream, nnz, index_dtype = _npy_member(archive, "indices", src)
    data_stream, data_len, data_dtype = _npy_member(archive, "data", src)
    if indptr_len != n + 1 or data_len != nnz:
        raise InputError(f"{src}: indptr has {indptr_len} entries for {n} rows, data {data_len} for {nnz} indices")
    block_rows = max(1, block_values // max(1, nnz // max(n, 1)))
    previous = int(_read_exactly(indptr_stream, 1, indptr_dtype, src)[0])
    if previous != 0:
        raise InputError(f"{src}: indptr must start at 0")
    for lo in range(0, n, block_rows):
        count = min(block_rows, n - lo)
        ends = _read_exactly(indptr_stream, count, indptr_dtype, src).astype(np.int64)
        row_nnz = np.diff(np.concatenate(([previous], ends)))
        if row_nnz.min() < 0 or ends[-1] > nnz:
            raise InputError(f"{src}: indptr decreases or exceeds nnz in rows {lo}:{lo + count}")
        k = int(ends[-1]) - previous
        writer.append(row_nnz, _read_exactly(index_stream, k, index_dtype, src),
                      _read_exactly(data_stream, k, data_dtype, src), None if y is None else y[lo:lo + count])
        previous = int(ends[-1])


def convert_npz(src, dst, *, labels=None, dtype="float32", index_dtype=None, task: str | None = None,
                block_values: int = BLOCK_VALUES) -> dict:
    """Convert a ``scipy.sparse.save_npz`` file to a CSR dataset.

    Parameters
    ----------
    src, dst : str or path-like
        The .npz file; the HDF5 output (atomic).
    labels : str, path-like or array, optional
        ``y``: a .npy file or an array of n numbers. Without it the file has no ``/y`` (data to predict on).
    dtype : {"float32", "float64"}
    index_dtype : int32 or int64, optional
    task : {"regression", "binary"}, optional
        Default: binary when labels are all 0/1.
    block_values : int
        Non-zeros read at a time from a CSR file (CSC/COO are loaded whole).

    Returns
    -------
    dict
        ``path, n, d, nnz, dtype, index_dtype, task, sparse, source_format``.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isfile(src):
        raise InputError(f"source file not found: {src}")
    refuse_same_files({"the source file": src}, {"OUT": dst})
    try:
        archive = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"{src} is not an .npz (zip) file") from None
    with archive:
        fmt, (n, d) = _npz_header(archive, src)
        y = _labels_for(labels, n)
        task = _task(task, y)
        attrs = {"source": src, "source_format": "npz", "converter": "pgd", "task": task}
        with csr_output(dst, d, dtype, index_dtype=index_dtype, labels=y is not None, attrs=attrs) as writer:
            if fmt == "csr":
                _stream_csr_npz(archive, src, n, writer, y, block_values)
            elif fmt in ("csc", "coo", "bsr", "dia"):
                from scipy.sparse import load_npz  # noqa: PLC0415 - SciPy only for .npz input
                writer.append_csr(load_npz(src).tocsr(), y)
            else:
                raise InputError(f"{src}: unknown sparse format {fmt!r}")
    return {**writer.summary, "path": dst, "task": task, "sparse": True, "source_format": "npz"}


def _task(task: str | None, y) -> str | None:
    if task not in (None, "regression", "binary"):
        raise InputError(f"task must be regression or binary, got {task!r}")
    if y is None:
        return task
    binary = bool(np.all((y == 0) | (y == 1)))
    if task == "binary" and not binary:
        raise InputError("task binary needs labels 0/1")
    return task or ("binary" if binary else "regression")


def _float_or_none(dset) -> np.dtype | None:
    """The float type to keep a labels / weights dataset in (float64 for other numbers); None if absent."""
    if not isinstance(dset, h5py.Dataset):
        return None
    return dset.dtype if dset.dtype.name in ("float32", "float64") else np.dtype(np.float64)


def _kept_attrs(h5: h5py.File) -> dict:
    return {key: h5.attrs[key] for key in _KEPT_ATTRS if key in h5.attrs}


def dense_to_csr(src, dst, *, dtype=None, index_dtype=None, weight_key: str | None = WEIGHT_KEY,
                 block_rows: int | None = None, locking: str = "best-effort") -> dict:
    """Convert a dense pgd dataset to CSR (zeros dropped; other values copied exactly).

    ``dtype`` defaults to the stored type; labels, sample weights and the task attribute are kept.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    refuse_same_files({"the source file": src}, {"OUT": dst})
    meta = inspect_dataset(src, require_y=False, locking=locking)
    dtype = float_dtype(dtype or (meta.dtype if meta.dtype.name in ("float32", "float64") else "float64"))
    with open_h5(src, locking) as h5:
        attrs = _kept_attrs(h5)
        weight_dtype = _float_or_none(h5.get(weight_key) if weight_key else None)
        label_dtype = _float_or_none(h5.get(meta.y_key) if meta.y_key else None)
    block = block_rows or default_block_rows(meta.d, max(dtype.itemsize, meta.dtype.itemsize), 64 << 20)
    with csr_output(dst, meta.d, dtype, index_dtype=index_dtype, labels=meta.y_key is not None,
                    weights=weight_dtype is not None, attrs=attrs, label_dtype=label_dtype,
                    weight_dtype=weight_dtype) as writer:
        for lo, x_block, y_block in iter_row_blocks(meta, 0, meta.n, block, None, locking):
            x_block = x_block.astype(dtype, copy=False)
            rows, cols = np.nonzero(x_block)
            weight = (read_weights(src, weight_key, meta.n, lo, lo + len(x_block), weight_dtype, locking=locking)
                      if weight_dtype is not None else None)
            writer.append(np.bincount(rows, minlength=len(x_block)), cols, x_block[rows, cols], y_block, weight)
    return {**writer.summary, "path": dst, "sparse": True, "source": src}


def csr_to_dense(src, dst, *, dtype=None, weight_key: str | None = WEIGHT_KEY, chunk_rows: int | None = None,
                 block_rows: int | None = None, locking: str = "best-effort") -> dict:
    """Convert a CSR dataset to a dense pgd dataset (duplicates within a row are summed, as SciPy does)."""
    src, dst = os.fspath(src), os.fspath(dst)
    refuse_same_files({"the source file": src}, {"OUT": dst})
    meta = inspect_csr(src, require_y=False, locking=locking)
    dtype = float_dtype(dtype or meta.dtype)
    with open_h5(src, locking) as h5:
        attrs = _kept_attrs(h5)
        weight_dtype = _float_or_none(h5.get(weight_key) if weight_key else None)
        label_dtype = _float_or_none(h5.get(meta.y_key) if meta.y_key else None)
    block = block_rows or default_block_rows(meta.d, dtype.itemsize, 64 << 20)
    with atomic_h5_file(dst) as h5:
        x_dset, _ = create_xy(h5, meta.n, meta.d, dtype, chunk_rows, attrs, labels=False)
        chunking = {"chunks": (x_dset.chunks[0],)}
        y_dset = h5.create_dataset("y", shape=(meta.n,), dtype=label_dtype, **chunking) if label_dtype else None
        w_dset = (h5.create_dataset(WEIGHT_KEY, shape=(meta.n,), dtype=weight_dtype, **chunking)
                  if weight_dtype else None)
        for lo in range(0, meta.n, block):
            hi = min(lo + block, meta.n)
            slab = read_csr_slab(meta, lo, hi, dtype, weight_key=None, locking=locking)
            x_dset[lo:hi] = slab.to_scipy().toarray()
            with open_h5(src, locking) as source:
                for dset, key in ((y_dset, meta.y_key), (w_dset, weight_key)):
                    if dset is not None:
                        dset[lo:hi] = source[key][lo:hi].reshape(-1)
        chunks = x_dset.chunks
    return {"path": dst, "n": meta.n, "d": meta.d, "dtype": dtype.name, "chunks": list(chunks), "sparse": False,
            "source": src}
