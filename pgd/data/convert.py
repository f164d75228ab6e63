"""Converting CSV, NumPy (.npy/.npz) and libsvm/svmlight files to the pgd HDF5 format.

Every source is streamed in blocks of rows: a first pass counts rows (and, for libsvm, finds the
number of features), a second pass parses blocks and writes them to ``/X`` and ``/y``.
"""

from __future__ import annotations

import csv
import itertools
import os
from typing import Iterable, Iterator

import numpy as np

from pgd.errors import InputError
from pgd.fileio import refuse_same_files
from pgd.data.slab import default_block_rows
from pgd.data.writer import atomic_h5_file, create_xy, float_dtype, summary

FORMATS = ("csv", "npy", "libsvm")
LABEL_MODES = ("asis", "pm1")
TASKS = ("regression", "binary")

# A source is (n, d, blocks): blocks yields (X float64 (m, d), y float64 (m,), where (m,) ints)
# where ``where`` locates each row for error messages (file line, or array row).


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _label_index(label_column, names: list[str] | None, ncols: int, src: str) -> int:
    """Resolve a label column given by index (negative allowed), header name or None (last)."""
    if label_column is None:
        return ncols - 1
    if isinstance(label_column, str):
        if names and label_column in names:
            return names.index(label_column)
        try:
            label_column = int(label_column)
        except ValueError:
            known = f"columns: {', '.join(names)}" if names else "the file has no header; give an index"
            raise InputError(f"label column {label_column!r} not found in {src} ({known})") from None
    if not -ncols <= label_column < ncols:
        raise InputError(f"label column {label_column} out of range for {src}, which has {ncols} columns")
    return label_column % ncols


class _LabelCheck:
    """Maps labels (``pm1``: -1 -> 0, +1 -> 1), counts bad ones and tracks whether all are 0/1."""

    def __init__(self, mode: str, src: str, unit: str):
        self.mode, self.src, self.unit = mode, src, unit
        self.bad, self.first_bad, self.all01 = 0, None, True

    def apply(self, y: np.ndarray, where: np.ndarray) -> np.ndarray:
        if self.mode == "pm1":
            bad = (y != 1) & (y != -1)
            if bad.any():
                self.bad += int(bad.sum())
                self.first_bad = self.first_bad if self.first_bad is not None else (
                    int(where[bad.argmax()]), float(y[bad.argmax()]))
            y = (y == 1).astype(y.dtype)
        self.all01 = self.all01 and bool(((y == 0) | (y == 1)).all())
        return y

    def raise_if_bad(self) -> None:
        if self.bad:
            where, value = self.first_bad
            raise InputError(f"{self.bad} labels in {self.src} are not -1 or +1 (first: {value:g} on "
                             f"{self.unit} {where}); use --labels asis to keep labels as they are")


def _csv_rows(src: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for the non-blank rows of a CSV file."""
    try:
        with open(src, newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            for fields in reader:
                if fields and any(f.strip() for f in fields):
                    yield reader.line_num, fields
    except (TypeError, csv.Error) as exc:
        raise InputError(f"cannot parse {src} as CSV with delimiter {delimiter!r}: {exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{src} is not a text file; is --format right?") from None


def _is_numeric(fields: list[str]) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def _parse_csv_block(rows: list[tuple[int, list[str]]], ncols: int, src: str) -> np.ndarray:
    for line, fields in rows:
        if len(fields) != ncols:
            raise InputError(f"{src} line {line}: {len(fields)} columns, expected {ncols}")
    try:
        return np.array([fields for _, fields in rows], dtype=np.float64)
    except ValueError:
        for line, fields in rows:
            for column, cell in enumerate(fields, 1):
                try:
                    float(cell)
                except ValueError:
                    raise InputError(f"{src} line {line} column {column}: {cell!r} is not a number") from None
        raise


def _csv_source(src: str, label_column, delimiter: str, header: bool | None, block_rows: int | None):
    rows = _csv_rows(src, delimiter)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{src} has no data rows")
    names = [f.strip() for f in first[1]]
    ncols = len(names)
    if header is None:
        header = not _is_numeric(names)
    n = sum(1 for _ in rows) + (0 if header else 1)
    label = _label_index(label_column, names if header else None, ncols, src)
    features = np.array([c for c in range(ncols) if c != label], dtype=np.intp)
    block = block_rows or default_block_rows(ncols, 8)

    def blocks():
        data = itertools.islice(_csv_rows(src, delimiter), 1 if header else 0, None)
        for batch in _batched(data, block):
            values = _parse_csv_block(batch, ncols, src)
            yield values[:, features], values[:, label], np.array([line for line, _ in batch])

    return n, len(features), blocks(), "line"


def _npy_source(src: str, label_column, block_rows: int | None):
    try:
        loaded = np.load(src, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {src} as .npy or .npz: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            missing = [k for k in ("X", "y") if k not in loaded.files]
            if missing:
                raise InputError(f"{src} lacks array(s) {', '.join(missing)} (arrays: "
                                 f"{', '.join(loaded.files) or 'none'}); an .npz needs X and y")
            X, y = loaded["X"], loaded["y"]
        if X.ndim != 2 or y.ndim != 1 or len(y) != len(X):
            raise InputError(f"{src}: X must be 2-D and y 1-D of the same length, got {X.shape} and {y.shape}")
        arrays = (X, y)
    else:
        if loaded.ndim != 2 or loaded.shape[1] < 2:
            raise InputError(f"{src}: expected a 2-D array with features and a label column, got shape {loaded.shape}")
        label = _label_index(label_column, None, loaded.shape[1], src)
        features = np.array([c for c in range(loaded.shape[1]) if c != label], dtype=np.intp)
        arrays = (loaded,)
    for a in arrays:
        if a.dtype.kind not in "biuf":
            raise InputError(f"{src}: array of dtype {a.dtype} is not real numeric")
    n, d = (arrays[0].shape[0], arrays[0].shape[1] if len(arrays) == 2 else len(features))
    block = block_rows or default_block_rows(max(d, 1), 8)

    def blocks():
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            if len(arrays) == 2:
                xb, yb = arrays[0][lo:hi], arrays[1][lo:hi]
            else:
                chunk = np.asarray(arrays[0][lo:hi])
                xb, yb = chunk[:, features], chunk[:, label]
            yield (np.asarray(xb, dtype=np.float64), np.asarray(yb, dtype=np.float64),
                   np.arange(lo, hi))

    return n, d, blocks(), "row"


def _libsvm_records(src: str, offset: int) -> Iterator[tuple[int, float, list[int], list[float]]]:
    """Yield ``(line, label, columns, values)`` with 0-based columns (``index - offset``)."""
    try:
        with open(src) as fh:
            for line, text in enumerate(fh, 1):
                tokens = text.split("#", 1)[0].split()
                if not tokens:
                    continue
                try:
                    label = float(tokens[0])
                except ValueError:
                    raise InputError(f"{src} line {line}: label {tokens[0]!r} is not a number") from None
                columns, values = [], []
                for token in tokens[1:]:
                    key, _, value = token.partition(":")
                    if key == "qid":
                        continue
                    try:
                        columns.append(int(key) - offset)
                        values.append(float(value))
                    except ValueError:
                        raise InputError(f"{src} line {line}: bad feature {token!r}, expected index:value") from None
                yield line, label, columns, values
    except UnicodeDecodeError:
        raise InputError(f"{src} is not a text file; is --format right?") from None


def _libsvm_source(src: str, n_features: int | None, zero_based: bool, block_rows: int | None):
    offset = 0 if zero_based else 1
    if n_features is not None and n_features < 1:
        raise InputError(f"n_features must be >= 1, got {n_features}")
    n, max_column = 0, -1
    for line, _, columns, _ in _libsvm_records(src, offset):
        n += 1
        if not columns:
            continue
        low, high = min(columns), max(columns)
        if low < 0:
            hint = "; indices are 1-based unless you pass --zero-based" if low == -1 and offset else ""
            raise InputError(f"{src} line {line}: feature index {low + offset} is invalid{hint}")
        if n_features is not None and high >= n_features:
            raise InputError(f"{src} line {line}: feature index {high + offset} exceeds "
                             f"--n-features {n_features}")
        max_column = max(max_column, high)
    d = n_features if n_features is not None else max_column + 1
    block = block_rows or default_block_rows(max(d, 1), 8)

    def blocks():
        for batch in _batched(_libsvm_records(src, offset), block):
            X = np.zeros((len(batch), d))
            for i, (_, _, columns, values) in enumerate(batch):
                X[i, columns] = values
            yield X, np.array([r[1] for r in batch]), np.array([r[0] for r in batch])

    return n, d, blocks(), "line"


def convert_file(src, dst, fmt: str, *, label_column: str | int | None = None, labels: str = "asis",
                 delimiter: str = ",", header: bool | None = None, n_features: int | None = None,
                 zero_based: bool = False, dtype="float32", chunk_rows: int | None = None,
                 task: str | None = None, block_rows: int | None = None) -> dict:
    """Convert a CSV, .npy/.npz or libsvm file to a pgd HDF5 dataset, streaming in blocks.

    Parameters
    ----------
    src, dst : str or path-like
        Source file and output HDF5 file (written atomically).
    fmt : {"csv", "npy", "libsvm"}
        Source format; "npy" also reads an .npz holding arrays ``X`` and ``y``.
    label_column : int or str, optional
        CSV/.npy label column: index (negative allowed) or CSV header name; default the last.
    labels : {"asis", "pm1"}
        "pm1" maps -1 -> 0 and +1 -> 1 and refuses other labels.
    delimiter : str
        CSV field delimiter.
    header : bool, optional
        Whether the CSV has a header line; None detects a non-numeric first line.
    n_features : int, optional
        libsvm: number of features (default: the largest index).
    zero_based : bool
        libsvm: indices count from 0 instead of 1.
    dtype : {"float32", "float64"}
        Stored type.
    chunk_rows : int, optional
        Rows per HDF5 chunk (default: about 1 MiB chunks).
    task : {"regression", "binary"}, optional
        Stored as the ``task`` attribute; default inferred ("binary" when all labels are 0/1).
    block_rows : int, optional
        Rows parsed and written per block.

    Returns
    -------
    dict
        Summary: path, n, d, dtype, chunks, task, source, source_format.
    """
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if labels not in LABEL_MODES:
        raise InputError(f"labels must be asis or pm1, got {labels!r}")
    if task not in (None, *TASKS):
        raise InputError(f"task must be regression or binary, got {task!r}")
    if block_rows is not None and block_rows < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows}")
    dtype = float_dtype(dtype)
    src = os.fspath(src)
    if not os.path.isfile(src):
        raise InputError(f"source file not found: {src}")
    refuse_same_files({"the source file": src}, {"OUT": os.fspath(dst)})
    if fmt == "csv":
        n, d, blocks, unit = _csv_source(src, label_column, delimiter, header, block_rows)
    elif fmt == "npy":
        n, d, blocks, unit = _npy_source(src, label_column, block_rows)
    else:
        n, d, blocks, unit = _libsvm_source(src, n_features, zero_based, block_rows)
    if n == 0:
        raise InputError(f"{src} has no data rows")
    if d == 0:
        raise InputError(f"{src} has no feature columns")
    check = _LabelCheck(labels, src, unit)
    attrs = {"source": src, "source_format": fmt, "converter": "pgd"}
    with atomic_h5_file(dst) as h5:
        x_dset, y_dset = create_xy(h5, n, d, dtype, chunk_rows, attrs)
        row = 0
        for x_block, y_block, where in blocks:
            x_dset[row:row + len(x_block)] = x_block
            y_dset[row:row + len(x_block)] = check.apply(y_block, where)
            row += len(x_block)
        check.raise_if_bad()
        if task == "binary" and not check.all01:
            raise InputError(f"task binary needs labels 0/1 but {src} has others; "
                             "use --labels pm1 for -1/+1 labels")
        task = task or ("binary" if check.all01 else "regression")
        h5.attrs["task"] = task
        chunks = x_dset.chunks
    return summary(dst, n, d, dtype, chunks, task, source=src, source_format=fmt)
