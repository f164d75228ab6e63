"""Converting CSV, NumPy (.npy/.npz) and libsvm/svmlight files to the pgd HDF5 format.

Every source is streamed in blocks of rows: a first pass counts rows (and, for libsvm, finds the
number of features; with ``labels="classes"``, collects the classes), a second pass parses blocks and
writes them to ``/X`` and ``/y``. What the converter decided for the user (the label column taken by
default, a detected delimiter, a pandas index column left out, a class mapping, labels that look
multiclass) is returned as ``notes`` and stored as attributes where it matters later.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from typing import Iterable, Iterator

import h5py
import numpy as np

from pgd.data.slab import default_block_rows
from pgd.data.sparse_csv import SlowText, fast_csv_blocks
from pgd.data.writer import atomic_h5_file, create_xy, float_dtype, summary
from pgd.errors import InputError
from pgd.fileio import refuse_same_files

FORMATS = ("csv", "npy", "libsvm")
LABEL_MODES = ("asis", "pm1", "classes")
TASKS = ("regression", "binary")
NO_LABELS = "none"  # --label-column none: every column is a feature (data to predict on)
DELIMITERS = (",", ";", "\t", "|")  # detected by --delimiter auto, in order of preference
_PANDAS_INDEX = ("", "Unnamed: 0")  # header of the index column pandas writes by default
_MULTICLASS_MAX = 50  # distinct integer labels still reported as "looks multiclass"

# A source is (n, d, blocks, unit, classes, label): blocks yields (X float64 (m, d), y (m,) or None,
# where (m,) ints) where ``where`` locates each row for error messages (file line, or array row); y holds
# floats, or the label texts of a CSV; ``classes`` is the set of raw labels when they were collected;
# ``label`` is the label column (None: no labels).


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


def _class_order(classes: set, src: str) -> list:
    """The classes of ``--labels classes`` in the order that maps them to 0 .. K-1 (numbers by value, else
    text); two for logistic loss, K for multinomial."""
    if len(classes) < 2:
        raise InputError(f"--labels classes needs at least two classes but {src} has {len(classes)}")
    try:
        return sorted(classes, key=float)
    except ValueError:
        return sorted(classes, key=str)


class _LabelCheck:
    """Turns raw labels into numbers (``pm1``: -1 -> 0, +1 -> 1; ``classes``: the two classes -> 0, 1),
    counts bad ones, and tracks whether all are 0/1 or look like multiclass integers."""

    def __init__(self, mode: str, src: str, unit: str, classes: list | None = None):
        self.mode, self.src, self.unit = mode, src, unit
        self.bad, self.first_bad, self.all01 = 0, None, True
        self.mapping = {str(c): float(i) for i, c in enumerate(classes)} if classes else None
        self.integers, self.values = True, set()

    def _numbers(self, y: np.ndarray, where: np.ndarray, column: int | None) -> np.ndarray:
        if self.mapping is not None:
            return np.array([self.mapping[str(value).strip()] for value in y], dtype=np.float64)
        if y.dtype.kind in "biuf":
            return y.astype(np.float64, copy=False)
        try:
            return y.astype(np.float64)
        except ValueError:
            for row, value in zip(where, y):
                try:
                    float(value)
                except ValueError:
                    place = f"{self.unit} {row}" + (f" column {column}" if column is not None else "")
                    raise InputError(f"{self.src} {place}: {value!r} is not a number; it is the label column: "
                                     "--labels classes maps the classes to 0 .. K-1") from None
            raise

    def apply(self, y: np.ndarray, where: np.ndarray, column: int | None = None) -> np.ndarray:
        y = self._numbers(y, where, column)
        if self.mode == "pm1":
            bad = (y != 1) & (y != -1)
            if bad.any():
                self.bad += int(bad.sum())
                self.first_bad = self.first_bad if self.first_bad is not None else (
                    int(where[bad.argmax()]), float(y[bad.argmax()]))
            y = (y == 1).astype(y.dtype)
        self.all01 = self.all01 and bool(((y == 0) | (y == 1)).all())
        self.integers = self.integers and bool(np.all(y == np.round(y)))
        if self.integers and len(self.values) <= _MULTICLASS_MAX:
            self.values.update(np.unique(y).tolist())
        return y

    def raise_if_bad(self) -> None:
        if self.bad:
            where, value = self.first_bad
            raise InputError(f"{self.bad} labels in {self.src} are not -1 or +1 (first: {value:g} on "
                             f"{self.unit} {where}); use --labels asis to keep labels as they are")

    def multiclass_note(self) -> str | None:
        """A note when the labels are a few distinct integers other than 0/1 (classes, not a quantity)."""
        if self.all01 or not self.integers or not 3 <= len(self.values) <= _MULTICLASS_MAX:
            return None
        low, high = min(self.values), max(self.values)
        return (f"the labels are {len(self.values)} distinct integers ({low:g} ... {high:g}): this looks like a "
                "multiclass task: it is stored as is; train it with --loss multinomial (labels 0 .. K-1; "
                "--labels classes maps other labels)")


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
        raise InputError(f"{src} is not a text file; is --from right?") from None


def _is_numeric(fields: list[str]) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def _parse_csv_block(rows: list[tuple[int, list[str]]], ncols: int, features: np.ndarray, src: str) -> np.ndarray:
    """The feature columns of a block of CSV rows as float64, or a one-line error at the first bad cell."""
    for line, fields in rows:
        if len(fields) != ncols:
            raise InputError(f"{src} line {line}: {len(fields)} columns, expected {ncols}")
    try:
        return np.array([[fields[c] for c in features] for _, fields in rows], dtype=np.float64).reshape(
            len(rows), len(features))
    except ValueError:
        for line, fields in rows:
            for column in features:
                try:
                    float(fields[column])
                except ValueError:
                    raise InputError(f"{src} line {line} column {column + 1}: {fields[column]!r} is not a "
                                     "number") from None
        raise


def resolve_delimiter(src: str, delimiter: str | None, notes: list) -> str:
    """The CSV delimiter: ``auto`` detects one of :data:`DELIMITERS` from the first lines; ``\\t`` and
    ``tab`` mean a tab."""
    if delimiter in (None, "auto"):
        try:
            with open(src, newline="", errors="replace") as fh:
                lines = [line for line in itertools.islice(fh, 50) if line.strip()][:20]
        except OSError:
            lines = []
        counts = {c: {line.count(c) for line in lines} for c in DELIMITERS}
        usable = [c for c in DELIMITERS if lines and len(counts[c]) == 1 and min(counts[c]) > 0]
        chosen = max(usable, key=lambda c: min(counts[c]), default=",")
        if chosen != ",":
            notes.append(f"delimiter {chosen!r} detected (pass --delimiter to choose another)")
        return chosen
    delimiter = {"\\t": "\t", "tab": "\t", "\\s": " ", "space": " "}.get(delimiter, delimiter)
    if len(delimiter) != 1:
        raise InputError(f"--delimiter must be one character, \\t, tab or auto, got {delimiter!r}")
    return delimiter


def _has_header(first: list[str], second: list[str] | None) -> bool:
    """A first line is a header when a field is text where the next line has a number (or no next line)."""
    if second is None or len(second) != len(first):
        return not _is_numeric(first)
    return any(not _is_numeric([a]) and _is_numeric([b]) for a, b in zip(first, second))


def csv_layout(src: str, label_column, delimiter: str, header: bool | None, notes: list):
    """What the first two rows of a CSV file say: ``(rows, first, second, header, ncols, label, features)``,
    ``rows`` the row iterator after them, ``label`` the label column (None: no labels), ``features`` the
    feature columns (an unnamed pandas index column left out)."""
    rows = _csv_rows(src, delimiter)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{src} has no data rows")
    second = next(rows, None)
    names = [f.strip() for f in first[1]]
    ncols = len(names)
    if header is None:
        header = _has_header(names, second[1] if second else None)
    skipped = [0] if header and ncols > 1 and names[0] in _PANDAS_INDEX else []
    if skipped:
        notes.append("column 1 has no name (the index column pandas writes): it is left out")
    label = None
    if label_column != NO_LABELS:
        label = _label_index(label_column, names if header else None, ncols, src)
        if label_column is None:
            shown = f"{names[label]!r} (the last)" if header else "the last"
            notes.append(f"label column: {shown}; --label-column picks another, --label-column none keeps every "
                         "column as a feature")
    features = np.array([c for c in range(ncols) if c != label and c not in skipped], dtype=np.intp)
    return rows, first, second, header, ncols, label, features


def _csv_source(src: str, label_column, delimiter: str, header: bool | None, block_rows: int | None,
                collect_classes: bool, notes: list):
    rows, first, second, header, ncols, label, features = csv_layout(src, label_column, delimiter, header, notes)
    feature_names = [first[1][c].strip() for c in features] if header else None   # kept as /feature_names
    fast = None if collect_classes else fast_csv_blocks(src, delimiter, bool(header), ncols)
    if fast is not None:  # numeric text: compiled count and parse, the csv module for awkward blocks
        return fast[0], len(features), _fast_blocks(fast[1], src, delimiter, ncols, features, label), "line", None, \
            label, feature_names
    n, classes = 0, (set() if collect_classes and label is not None else None)
    for _, fields in itertools.chain([] if header else [first], [second] if second else [], rows):
        n += 1
        if classes is not None and label < len(fields):
            classes.add(fields[label].strip())
    block = block_rows or default_block_rows(ncols, 8)

    def blocks():
        data = itertools.islice(_csv_rows(src, delimiter), 1 if header else 0, None)
        for batch in _batched(data, block):
            X = _parse_csv_block(batch, ncols, features, src)
            y = None if label is None else np.array([fields[label].strip() for _, fields in batch], dtype=object)
            yield X, y, np.array([line for line, _ in batch])

    return n, len(features), blocks(), "line", classes, label, feature_names


def _fast_blocks(items, src: str, delimiter: str, ncols: int, features: np.ndarray, label: int | None):
    """Blocks of :func:`pgd.data.sparse_csv.fast_csv_blocks` in the csv path's form; a :class:`SlowText`
    block is parsed by the csv module (same values, same messages)."""
    for item in items:
        if isinstance(item, SlowText):
            try:
                text = item.text.decode()
            except UnicodeDecodeError:
                raise InputError(f"{src} is not a text file; is --from right?") from None
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
            batch = [(reader.line_num + item.first_line - 1, fields) for fields in reader
                     if fields and any(f.strip() for f in fields)]
            if batch:
                X = _parse_csv_block(batch, ncols, features, src)  # checks the column counts first
                y = None if label is None else np.array([f[label].strip() for _, f in batch], dtype=object)
                yield X, y, np.array([line for line, _ in batch])
            continue
        values, where = item
        yield values[:, features], None if label is None else values[:, label], where


def _npy_source(src: str, label_column, block_rows: int | None, collect_classes: bool, notes: list):
    try:
        loaded = np.load(src, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {src} as .npy or .npz: {exc}") from None
    label = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            wanted = ("X",) if label_column == NO_LABELS else ("X", "y")
            missing = [k for k in wanted if k not in loaded.files]
            if missing:
                raise InputError(f"{src} lacks array(s) {', '.join(missing)} (arrays: "
                                 f"{', '.join(loaded.files) or 'none'}); an .npz needs X and y")
            X = loaded["X"]
            y = loaded["y"] if "y" in wanted else None
        if X.ndim != 2 or (y is not None and (y.ndim != 1 or len(y) != len(X))):
            raise InputError(f"{src}: X must be 2-D and y 1-D of the same length, got {X.shape} and "
                             f"{getattr(y, 'shape', None)}")
        arrays, features = (X, y), None
    else:
        if loaded.ndim != 2 or loaded.shape[1] < (1 if label_column == NO_LABELS else 2):
            raise InputError(f"{src}: expected a 2-D array with features and a label column, got shape {loaded.shape}")
        if label_column != NO_LABELS:
            label = _label_index(label_column, None, loaded.shape[1], src)
            if label_column is None:
                notes.append("label column: the last; --label-column picks another, --label-column none keeps "
                             "every column as a feature")
        features = np.array([c for c in range(loaded.shape[1]) if c != label], dtype=np.intp)
        arrays = (loaded, None)
    for a in arrays:
        if a is not None and a.dtype.kind not in "biuf":
            raise InputError(f"{src}: array of dtype {a.dtype} is not real numeric")
    n, d = arrays[0].shape[0], arrays[0].shape[1] if features is None else len(features)
    labelled = arrays[1] is not None or label is not None
    block = block_rows or default_block_rows(max(d, 1), 8)

    def parts(lo: int, hi: int):
        if features is None:
            return arrays[0][lo:hi], (arrays[1][lo:hi] if arrays[1] is not None else None)
        chunk = np.asarray(arrays[0][lo:hi])
        return chunk[:, features], (chunk[:, label] if label is not None else None)

    classes = None
    if collect_classes and labelled:
        classes = set()
        for lo in range(0, n, block):
            classes.update(np.unique(parts(lo, min(lo + block, n))[1]).tolist())

    def blocks():
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            xb, yb = parts(lo, hi)
            yield (np.asarray(xb, dtype=np.float64), None if yb is None else np.asarray(yb, dtype=np.float64),
                   np.arange(lo, hi))

    return n, d, blocks(), "row", classes, "y" if features is None and labelled else label, None


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
        raise InputError(f"{src} is not a text file; is --from right?") from None


def _libsvm_source(src: str, n_features: int | None, zero_based: bool, block_rows: int | None,
                   collect_classes: bool, notes: list):
    offset = 0 if zero_based else 1
    if n_features is not None and n_features < 1:
        raise InputError(f"n_features must be >= 1, got {n_features}")
    n, max_column, classes = 0, -1, (set() if collect_classes else None)
    for line, label, columns, _ in _libsvm_records(src, offset):
        n += 1
        if classes is not None:
            classes.add(label)
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
    if n_features is None:
        notes.append(f"{d} features (the largest index in the file); --n-features sets the count, e.g. for a "
                     "file whose last features never occur")
    block = block_rows or default_block_rows(max(d, 1), 8)

    def blocks():
        for batch in _batched(_libsvm_records(src, offset), block):
            X = np.zeros((len(batch), d))
            for i, (_, _, columns, values) in enumerate(batch):
                X[i, columns] = values
            yield X, np.array([r[1] for r in batch]), np.array([r[0] for r in batch])

    return n, d, blocks(), "line", classes, 0, None


def convert_file(src, dst, fmt: str, *, label_column: str | int | None = None, labels: str = "asis",
                 delimiter: str = "auto", header: bool | None = None, n_features: int | None = None,
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
        CSV/.npy label column: index (negative allowed) or CSV header name; default the last; ``"none"``:
        no labels, every column is a feature (data to predict on).
    labels : {"asis", "pm1", "classes"}
        "pm1" maps -1 -> 0 and +1 -> 1 and refuses other labels; "classes" maps the two distinct labels
        (text or numbers, in sorted order) to 0 and 1 and stores them as the attribute ``label_classes``.
    delimiter : str
        CSV field delimiter: one character, ``\\t``/``tab``, or ``auto`` (detect ``,`` ``;`` tab ``|``).
    header : bool, optional
        Whether the CSV has a header line; None detects one. A header whose first name is empty (the
        index column pandas writes) drops that column.
    n_features : int, optional
        libsvm: number of features (default: the largest index; stored as ``n_features_from``).
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
        Summary: path, n, d, dtype, chunks, task, source, source_format, and ``notes`` (what was decided
        for the user, one sentence each).
    """
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if labels not in LABEL_MODES:
        raise InputError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if task not in (None, *TASKS):
        raise InputError(f"task must be regression or binary, got {task!r}")
    if block_rows is not None and block_rows < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows}")
    if label_column == NO_LABELS and (labels != "asis" or task):
        raise InputError("--label-column none converts features only: --labels and --task do not apply")
    dtype = float_dtype(dtype)
    src = os.fspath(src)
    if not os.path.isfile(src):
        raise InputError(f"source file not found: {src}")
    refuse_same_files({"the source file": src}, {"OUT": os.fspath(dst)})
    notes, collect = [], labels == "classes"
    attrs = {"source": src, "source_format": fmt, "converter": "pgd"}
    if fmt == "csv":
        delimiter = resolve_delimiter(src, delimiter, notes)
        n, d, blocks, unit, classes, label, names = _csv_source(src, label_column, delimiter, header, block_rows,
                                                         collect, notes)
    elif fmt == "npy":
        n, d, blocks, unit, classes, label, names = _npy_source(src, label_column, block_rows, collect, notes)
    else:
        n, d, blocks, unit, classes, label, names = _libsvm_source(src, n_features, zero_based, block_rows, collect,
                                                            notes)
        attrs["n_features_from"] = "--n-features" if n_features is not None else "largest index in the file"
    if n == 0:
        raise InputError(f"{src} has no data rows")
    if d == 0:
        raise InputError(f"{src} has no feature columns (is --delimiter right?)")
    order = _class_order(classes, src) if classes is not None else None
    if order is not None:
        attrs["label_classes"] = [str(c) for c in order]
        shown = ", ".join(f"{c!r} -> {i}" for i, c in enumerate(order[:6])) + (", ..." if len(order) > 6 else "")
        notes.append(f"labels mapped: {shown} (stored as the attribute label_classes"
                     f"{'; train with --loss multinomial' if len(order) > 2 else ''})")
    check = _LabelCheck(labels, src, unit, order)
    column = label + 1 if fmt == "csv" and label is not None else None
    with atomic_h5_file(dst) as h5:
        x_dset, y_dset = create_xy(h5, n, d, dtype, chunk_rows, attrs, labels=label is not None)
        if names is not None:   # the CSV header's feature names travel into the models trained on it
            h5.create_dataset("feature_names", data=names, dtype=h5py.string_dtype())
        row = 0
        for x_block, y_block, where in blocks:
            x_dset[row:row + len(x_block)] = x_block
            if y_dset is not None:
                y_dset[row:row + len(x_block)] = check.apply(y_block, where, column)
            row += len(x_block)
        check.raise_if_bad()
        if task == "binary" and not check.all01:
            raise InputError(f"task binary needs labels 0/1 but {src} has others; "
                             "use --labels pm1 for -1/+1 labels or --labels classes for two other classes")
        if y_dset is not None:
            note = None if task or order is not None else check.multiclass_note()
            notes += [note] if note else []
            task = task or ("binary" if check.all01 else "regression")
            h5.attrs["task"] = task
        chunks = x_dset.chunks
    return summary(dst, n, d, dtype, chunks, task, source=src, source_format=fmt, notes=notes)
