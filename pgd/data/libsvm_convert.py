"""LIBSVM / SVMlight text to a sparse (CSR) or dense pgd dataset: streaming, compiled, and parallel.

Every rank parses its own byte range of the text (:func:`line_aligned_range`: a line belongs to the
rank whose share of the bytes holds its first byte), block by block with memory bounded by the block,
and spools its rows to part files (:mod:`pgd.data.csr_parts`). The ranks then exchange their row,
non-zero and line counts, largest index, label summary and first error through an injected
``allgather`` (mpi4py's ``comm.allgather`` under MPI; this module does not import MPI), and rank 0
writes the one output file from the parts in an order that does not depend on the number of ranks:
the output bytes are the same for 1, 2 or 3 ranks. Errors are one line, the same on every rank.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pgd.data.csr import index_dtype_for
from pgd.data.csr_parts import PartReader, PartWriter, remove_parts
from pgd.data.csr_writer import CsrWriter
from pgd.data.libsvm_parse import LibsvmSyntaxError, Workspace, parse_libsvm_block, resolve_engine
from pgd.data.slab import default_block_rows
from pgd.data.writer import atomic_h5_file, create_xy, float_dtype
from pgd.errors import InputError
from pgd.fileio import refuse_same_files

BLOCK_BYTES = 8 << 20  # text parsed at a time
LABEL_MODES = ("asis", "pm1", "classes")
TASKS = ("regression", "binary")
_DISTINCT = 50  # distinct labels tracked (for "classes" and the multiclass note)
_NEWLINE = 10


@dataclass
class Collective:
    """Who this process is among the converting ranks, and how they share small Python objects."""

    rank: int = 0
    size: int = 1
    allgather: Callable[[object], list] = field(default=lambda obj: [obj])
    idle_barrier: Callable[[], None] | None = None  # waits without spinning (None: the allgather waits)

    @classmethod
    def from_comm(cls, comm, poll_seconds: float = 0.002) -> "Collective":
        """From an mpi4py-like communicator (``Get_rank``, ``Get_size``, ``allgather``, ``Ibarrier``).

        Ranks that finish early wait in a non-blocking barrier polled every ``poll_seconds``, so they leave
        the cores to the ranks still parsing (and to rank 0 writing) instead of spinning in MPI."""
        def idle_barrier():
            request = comm.Ibarrier()
            while not request.Test():
                time.sleep(poll_seconds)
        return cls(comm.Get_rank(), comm.Get_size(), comm.allgather, idle_barrier)

    def wait_idle(self) -> None:
        """Wait for every rank to get here, sleeping rather than spinning where the communicator allows."""
        if self.idle_barrier is not None and self.size > 1:
            self.idle_barrier()

    def agree(self, error: str | None) -> None:
        """Raise the first rank's error on every rank (collective when several ranks run)."""
        errors = [e for e in self.allgather(error) if e]
        if errors:
            raise InputError(errors[0], collective=self.size > 1)


def _line_start_at_or_after(handle, position: int, file_size: int) -> int:
    """The first line start ``>= position``: 0, or one past a newline at ``>= position - 1``."""
    if position <= 0:
        return 0
    handle.seek(position - 1)
    at = position - 1
    while at < file_size:
        chunk = handle.read(1 << 16)
        found = chunk.find(b"\n")
        if found >= 0:
            return at + found + 1
        at += len(chunk)
    return file_size


def line_aligned_range(path: str, size: int, rank: int, start: int = 0) -> tuple[int, int]:
    """Rank ``rank``'s bytes of ``path`` from ``start`` (a line start) to the end: whole lines, the ranks'
    ranges in order covering them once; a line belongs to the rank whose ``1 / size`` share of the bytes
    holds its first byte (a rank may get none)."""
    file_size = os.path.getsize(path)
    span = file_size - start
    with open(path, "rb") as handle:
        return tuple(_line_start_at_or_after(handle, start + r * span // size, file_size) for r in (rank, rank + 1))


def text_blocks(path: str, start: int, stop: int, block_bytes: int):
    """Yield uint8 views of bytes ``[start, stop)`` of ``path`` that end at line ends (a line longer
    than the block grows the buffer). One buffer is reused: a view is valid until the next is asked for."""
    buffer = np.empty(block_bytes, dtype=np.uint8)
    held, at = 0, start  # bytes kept from the last read (a line's beginning); file position
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        while True:
            if held == len(buffer):
                buffer = np.concatenate([buffer, np.empty_like(buffer)])
            want = min(len(buffer) - held, stop - at)
            got = handle.readinto(memoryview(buffer)[held:held + want]) if want > 0 else 0
            at, filled = at + got, held + got
            if at >= stop or not got:
                if filled:
                    yield buffer[:filled]
                return
            newlines = np.flatnonzero(buffer[held:filled] == _NEWLINE)
            cut = held + int(newlines[-1]) + 1 if len(newlines) else 0
            if cut:
                yield buffer[:cut]
            held = filled - cut
            buffer[:held] = buffer[cut:filled]


@dataclass
class _Labels:
    """What the ranks need to agree on about the labels: distinct values (up to a limit), integers or
    not, and the first label (line, value) that is not -1/+1."""

    distinct: set = field(default_factory=set)
    many: bool = False
    integers: bool = True
    not_pm1: tuple | None = None

    def add(self, labels: np.ndarray, row_line: np.ndarray, line_offset: int) -> None:
        self.integers = self.integers and bool(np.all(labels == np.round(labels)))
        if not self.many:
            self.distinct.update(np.unique(labels).tolist())
            self.many = len(self.distinct) > _DISTINCT
        bad = (labels != 1) & (labels != -1)
        if self.not_pm1 is None and bad.any():
            at = int(np.argmax(bad))
            self.not_pm1 = (line_offset + int(row_line[at]), float(labels[at]))


def _rank_parse(src: str, start: int, stop: int, parts: PartWriter, offset: int, n_features: int | None,
                block_bytes: int, engine: str) -> dict:
    """Parse bytes ``[start, stop)`` into the part files; the first error stops with its local line."""
    rows = nnz = lines = 0
    max_index, labels, workspace = -1, _Labels(), Workspace()
    for text in text_blocks(src, start, stop, block_bytes):
        try:
            block = parse_libsvm_block(text, engine, workspace)
        except LibsvmSyntaxError as error:
            return {"error": (lines + error.line, str(error))}
        indices = block.indices - offset
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if _index_problem(low, high, offset, n_features):  # report the first bad index in the block
                at = int(np.argmax((indices < 0) | (indices >= (n_features or high + 1))))
                row = int(np.searchsorted(np.cumsum(block.row_nnz), at, side="right"))
                problem = _index_problem(int(indices[at]), int(indices[at]), offset, n_features)
                return {"error": (lines + int(block.row_line[row]), problem)}
            max_index = max(max_index, high)
        labels.add(block.labels, block.row_line, lines)
        parts.write(block.row_nnz, block.labels, indices, block.values)
        rows, nnz, lines = rows + len(block.row_nnz), nnz + len(indices), lines + block.lines
    return {"rows": rows, "nnz": nnz, "lines": lines, "max_index": max_index, "labels": labels, "error": None}


def _index_problem(low: int, high: int, offset: int, n_features: int | None) -> str | None:
    if low < 0:
        hint = "; indices are 1-based unless you pass zero_based (--zero-based)" if offset else ""
        return f"feature index {low + offset} is invalid{hint}"
    if n_features is not None and high >= n_features:
        return f"feature index {high + offset} exceeds n_features (--n-features) {n_features}"
    return None


def _first_error(src: str, gathered: list[dict]) -> str | None:
    """The first error in file order, with its line in the whole file."""
    lines_before = 0
    for part in gathered:
        if part.get("error"):
            line, message = part["error"]
            return f"{src} line {lines_before + line}: {message}"
        lines_before += part["lines"]
    return None


def _merge_labels(gathered: list[dict]) -> _Labels:
    merged, lines_before = _Labels(), 0
    for part in gathered:
        labels = part["labels"]
        merged.distinct |= labels.distinct
        merged.many = merged.many or labels.many or len(merged.distinct) > _DISTINCT
        merged.integers = merged.integers and labels.integers
        if merged.not_pm1 is None and labels.not_pm1 is not None:
            merged.not_pm1 = (lines_before + labels.not_pm1[0], labels.not_pm1[1])
        lines_before += part["lines"]
    return merged


def label_mapping(src: str, mode: str, task: str | None, labels: _Labels, notes: list) -> tuple:
    """``(map, task, attrs)``: ``map`` turns raw labels into stored ones (None: as they are)."""
    attrs, mapping = {}, None
    if mode == "pm1":
        if labels.not_pm1 is not None:
            line, value = labels.not_pm1
            raise InputError(f"labels in {src} are not all -1 or +1 (first: {value:g} on line {line}); "
                             "use labels asis (--labels asis) to keep them")
        mapping, values = _pm1, {0.0, 1.0}
    elif mode == "classes":
        if labels.many or len(labels.distinct) < 2:
            shown = ", ".join(f"{v:g}" for v in sorted(labels.distinct)[:6])
            count = f"more than {_DISTINCT}" if labels.many else str(len(labels.distinct))
            raise InputError(f"labels classes needs 2 to {_DISTINCT} classes but {src} has {count}: {shown}")
        order = sorted(labels.distinct)
        mapping = _Classes(tuple(order))
        attrs["label_classes"] = [f"{value:g}" for value in order]
        shown = ", ".join(f"{value:g} -> {index}" for index, value in enumerate(order))
        more = "; train with --loss multinomial" if len(order) > 2 else ""
        notes.append(f"labels mapped: {shown} (stored as the attribute label_classes{more})")
        values = {float(index) for index in range(len(order))}
    else:
        values = set(labels.distinct)
        if values == {-1.0, 1.0} and task is None:
            notes.append("the labels are -1/+1, stored as they are (regression); labels pm1 (--labels pm1) maps "
                         "them to 0/1 for a binary task")
    all01 = not labels.many and values <= {0.0, 1.0}
    if task == "binary" and not all01:
        raise InputError(f"task binary needs labels 0/1 but {src} has others; use labels pm1 for -1/+1 labels "
                         "or labels classes for two other classes")
    if task is None and mode != "classes" and not all01 and labels.integers and not labels.many and len(values) >= 3:
        notes.append(f"the labels are {len(values)} distinct integers: this looks like a multiclass task: it is "
                     "stored as is; train it with --loss multinomial (labels 0 .. K-1; --labels classes maps "
                     "other values)")
    return mapping, task or ("binary" if all01 else "regression"), attrs


def _pm1(y: np.ndarray) -> np.ndarray:
    return (y == 1).astype(np.float64)


@dataclass(frozen=True)
class _Classes:
    order: tuple

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """Each label's index in the sorted classes (every label is one of them: they were collected)."""
        return np.searchsorted(np.asarray(self.order), y).astype(np.float64)


def _write_output(dst: str, reader: PartReader, n: int, nnz: int, d: int, dense: bool, dtype: np.dtype,
                  index_dtype, mapping, attrs: dict, block_bytes: int, chunk_rows: int | None) -> None:
    """Rank 0: the one output file from the parts, in fixed blocks of global rows."""
    relabel = mapping or (lambda y: y)
    with atomic_h5_file(dst) as h5:
        if dense:
            x_dset, y_dset = create_xy(h5, n, d, dtype, chunk_rows, attrs)
            block_rows = default_block_rows(d, dtype.itemsize, block_bytes)
            row = 0
            for row_nnz, labels, indices, values in reader.row_blocks(block_rows):
                block = np.zeros((len(row_nnz), d), dtype=dtype)
                block[np.repeat(np.arange(len(row_nnz)), row_nnz), indices] = values
                x_dset[row:row + len(block)] = block
                y_dset[row:row + len(block)] = relabel(labels)
                row += len(block)
            return
        writer = CsrWriter(h5, d, dtype, n=n, nnz=nnz, index_dtype=index_dtype, attrs=attrs)
        for row_nnz, labels, indices, values in reader.pieces(max(1, block_bytes // 16)):
            writer.append(row_nnz, indices, values, relabel(labels))
        writer.finish()


def _check_options(labels: str, task: str | None, n_features: int | None, block_bytes: int, index_dtype) -> None:
    if labels not in LABEL_MODES:
        raise InputError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if task not in (None, *TASKS):
        raise InputError(f"task must be regression or binary, got {task!r}")
    if n_features is not None and n_features < 1:
        raise InputError(f"n_features must be >= 1, got {n_features}")
    if block_bytes < 1:
        raise InputError(f"block_bytes must be >= 1, got {block_bytes}")
    if index_dtype is not None and np.dtype(index_dtype) not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise InputError(f"index dtype must be int32 or int64, got {index_dtype}")


def _shared_directory(dst: str, group: Collective) -> str:
    """A fresh directory beside ``dst`` for the part files, made by rank 0 and known to all ranks."""
    made, error = None, None
    if group.rank == 0:
        try:
            made = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(dst)),
                                    prefix=f".{os.path.basename(dst)}.parts-")
        except OSError as exc:
            error = f"cannot write beside {dst}: {exc.strerror or exc}"
    made, error = group.allgather((made, error))[0]
    if error:
        raise InputError(error, collective=group.size > 1)
    return made


def convert_libsvm(src, dst, *, dense: bool = False, n_features: int | None = None, zero_based: bool = False,
                   dtype="float32", labels: str = "asis", task: str | None = None, index_dtype=None,
                   block_bytes: int = BLOCK_BYTES, engine: str = "auto", chunk_rows: int | None = None,
                   collective: Collective | None = None) -> dict:
    """Convert a LIBSVM / SVMlight file to a CSR (default) or dense pgd dataset; every rank calls it.

    Parameters
    ----------
    src, dst : str or path-like
        Text input; HDF5 output (written atomically by rank 0).
    dense : bool
        Write a dense ``/X`` instead of CSR.
    n_features : int, optional
        Number of features (default: the largest index); an index beyond it is an error.
    zero_based : bool
        Indices count from 0 (default: from 1, as LIBSVM writes them).
    dtype : {"float32", "float64"}
        Stored value type.
    labels : {"asis", "pm1", "classes"}
        ``pm1`` maps -1/+1 to 0/1; ``classes`` maps the K distinct labels (sorted, at most 50) to 0 .. K-1.
    task : {"regression", "binary"}, optional
        Default: binary when the stored labels are all 0/1.
    index_dtype : int32 or int64, optional
        Stored index type (default: int32 while d < 2**31).
    block_bytes : int
        Text parsed at a time per rank: memory stays a small multiple of it.
    engine : {"auto", "numba", "numpy"}
        Parser; both give the same output.
    chunk_rows : int, optional
        Dense output: rows per HDF5 chunk.
    collective : Collective, optional
        Rank, size and allgather of the converting ranks (default: one rank).

    Returns
    -------
    dict
        The same on every rank: path, n, d, nnz, dtype, index_dtype, task, sparse, notes, ranks.

    Raises
    ------
    InputError
        One line, on every rank alike: bad options, a malformed line (with its line number in the file),
        an index below the base or beyond ``n_features``, labels that the mode refuses, no rows.
    """
    group = collective or Collective()
    src, dst = os.fspath(src), os.fspath(dst)
    error = None
    try:
        _check_options(labels, task, n_features, block_bytes, index_dtype)
        dtype = float_dtype(dtype)
        engine = resolve_engine(engine)
        if not os.path.isfile(src):
            raise InputError(f"source file not found: {src}")
        refuse_same_files({"the source file": src}, {"OUT": dst})
    except (InputError, ImportError, ValueError) as exc:
        error = str(exc)
    group.agree(error)
    directory = _shared_directory(dst, group)
    try:
        return _convert_in(directory, src, dst, group, dense=dense, n_features=n_features,
                           offset=0 if zero_based else 1, dtype=dtype, labels=labels, task=task,
                           index_dtype=index_dtype, block_bytes=block_bytes, engine=engine, chunk_rows=chunk_rows)
    finally:
        remove_parts(directory, group.rank)
        group.allgather(None)  # every rank's parts are gone
        if group.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)


def _convert_in(directory: str, src: str, dst: str, group: Collective, *, dense: bool, n_features, offset: int,
                dtype: np.dtype, labels: str, task, index_dtype, block_bytes: int, engine: str, chunk_rows) -> dict:
    began = time.perf_counter()
    start, stop = line_aligned_range(src, group.size, group.rank)
    parts = PartWriter(directory, group.rank, dtype)
    try:
        mine = _rank_parse(src, start, stop, parts, offset, n_features, block_bytes, engine)
    finally:
        parts.close()
    mine["parse_seconds"] = time.perf_counter() - began
    group.wait_idle()
    gathered = group.allgather(mine)
    parsed = time.perf_counter()  # rank 0's write is timed from here
    group.agree(_first_error(src, gathered) if group.rank == 0 else None)
    n, nnz = sum(p["rows"] for p in gathered), sum(p["nnz"] for p in gathered)
    max_index = max(p["max_index"] for p in gathered)
    d = n_features if n_features is not None else max_index + 1
    notes, outcome = [], None
    try:
        if n == 0:
            raise InputError(f"{src} has no data rows")
        if d == 0:
            raise InputError(f"{src} has no features; pass n_features (--n-features) to give their number")
        if n_features is None:
            notes.append(f"{d} features (the largest index in the file); n_features (--n-features) sets the "
                         "count, e.g. to align a test file with its training file")
        mapping, task, label_attrs = label_mapping(src, labels, task, _merge_labels(gathered), notes)
        index_dtype = np.dtype(index_dtype) if index_dtype is not None else index_dtype_for(d)
        attrs = {"source": src, "source_format": "libsvm", "converter": "pgd", "task": task, **label_attrs,
                 "n_features_from": "--n-features" if n_features is not None else "largest index in the file"}
        if group.rank == 0:
            reader = PartReader(directory, [(p["rows"], p["nnz"]) for p in gathered], dtype)
            _write_output(dst, reader, n, nnz, d, dense, dtype, index_dtype, mapping, attrs, block_bytes,
                          chunk_rows)
    except InputError as exc:
        outcome = str(exc)
    write_seconds = time.perf_counter() - parsed
    group.wait_idle()
    finals = group.allgather((outcome, write_seconds))
    group.agree(next((error for error, _ in finals if error), None) if group.rank == 0 else None)
    seconds = {"parse_max": max(p["parse_seconds"] for p in gathered), "write": finals[0][1]}
    return {"path": dst, "n": n, "d": d, "nnz": nnz, "dtype": dtype.name, "index_dtype": index_dtype.name,
            "task": task, "sparse": not dense, "source": src, "source_format": "libsvm", "notes": notes,
            "ranks": group.size, "seconds": {k: round(v, 3) for k, v in seconds.items()}}
