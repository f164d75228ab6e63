"""Numeric CSV to a dense pgd dataset in parallel: every rank parses its own byte range.

The layout (delimiter, header, label and feature columns) comes from the first rows as in
:func:`pgd.data.convert.convert_file`; the data rows after the header are split into line-aligned byte
ranges (:func:`pgd.data.libsvm_convert.line_aligned_range`). Each rank counts its lines (so every error
names its line in the whole file), parses its range with the compiled CSV kernel (blocks the kernel
cannot take go to the csv module, as in the serial path), spools rows to raw part files, and rank 0 writes
``/X`` and ``/y`` in fixed blocks of global rows: the same bytes for any number of ranks. Needs numba.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from pgd.data.convert import NO_LABELS, _fast_blocks, _LabelCheck, csv_layout, resolve_delimiter
from pgd.data.libsvm_convert import (
    BLOCK_BYTES,
    LABEL_MODES,
    TASKS,
    Collective,
    _Labels,
    _merge_labels,
    _shared_directory,
    label_mapping,
    line_aligned_range,
    text_blocks,
)
from pgd.data.slab import default_block_rows
from pgd.data.sparse_csv import SlowText, _data_start, _kernels
from pgd.data.writer import atomic_h5_file, create_xy, float_dtype
from pgd.errors import InputError
from pgd.fileio import refuse_same_files


def _part(directory: str, rank: int, name: str) -> str:
    return os.path.join(directory, f"{rank}.{name}")


def _count_lines(src: str, start: int, stop: int, block_bytes: int) -> int:
    lines = 0
    for text in text_blocks(src, start, stop, block_bytes):
        lines += int(np.count_nonzero(text == 10)) + (0 if text[-1] == 10 else 1)
    return lines


def _parsed_blocks(src, start, stop, first_line, layout, block_bytes):
    """Yield ``(X features float64, y float64 or None, lines)`` of bytes ``[start, stop)``."""
    delimiter, ncols, features, label = layout
    code, parse = ord(delimiter), _kernels()[1]
    line = first_line - 1
    for text in text_blocks(src, start, stop, block_bytes):
        buf, n = (text, len(text) - 1) if text[-1] == 10 else (np.append(text, np.uint8(10)), len(text))
        out = np.empty((int(np.count_nonzero(text == 10)) + 1, ncols))
        where = np.empty(len(out), dtype=np.int64)
        m, lines, error = parse(buf, n, code, ncols, out, where)
        if error:
            lines = int(np.count_nonzero(text[:n] == 10)) + (1 if n else 0)
            items = [SlowText(text.tobytes(), line + 1)]
        else:
            items = [(out[:m], where[:m] + line)]
        yield from _fast_blocks(items, src, delimiter, ncols, features, label)
        line += lines


def _rank_parse(src, start, stop, first_line, layout, directory, rank, dtype, block_bytes) -> dict:
    rows, labels = 0, _Labels()
    check = _LabelCheck("asis", src, "line")
    column = layout[3] + 1 if layout[3] is not None else None
    with open(_part(directory, rank, "x"), "wb") as x_file, open(_part(directory, rank, "y"), "wb") as y_file:
        try:
            for X, y, where in _parsed_blocks(src, start, stop, first_line, layout, block_bytes):
                x_file.write(memoryview(np.ascontiguousarray(X, dtype=dtype)))
                if y is not None:
                    y = check._numbers(y, where, column)
                    labels.add(y, where, 0)
                    y_file.write(memoryview(np.ascontiguousarray(y, dtype=np.float64)))
                rows += len(X)
        except InputError as error:
            return {"error": str(error)}
    return {"rows": rows, "labels": labels, "lines": 0, "error": None}


def _write_dense(dst, directory, counts, d, dtype, labelled, mapping, attrs, chunk_rows, block_bytes) -> tuple:
    """Rank 0: ``/X`` and ``/y`` from the parts, in fixed blocks of global rows."""
    n = sum(counts)
    block = default_block_rows(d, max(dtype.itemsize, 8), block_bytes)
    relabel = mapping or (lambda y: y)
    with atomic_h5_file(dst) as h5:
        x_dset, y_dset = create_xy(h5, n, d, dtype, chunk_rows, attrs, labels=labelled)
        starts = np.concatenate(([0], np.cumsum(counts)))
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            pieces = []
            for rank in np.flatnonzero((starts[:-1] < hi) & (starts[1:] > lo)):
                a, b = max(lo, starts[rank]) - starts[rank], min(hi, starts[rank + 1]) - starts[rank]
                x = np.fromfile(_part(directory, rank, "x"), dtype=dtype, count=(b - a) * d,
                                offset=a * d * dtype.itemsize)
                y = np.fromfile(_part(directory, rank, "y"), dtype=np.float64, count=(b - a) if labelled else 0,
                                offset=a * 8)
                pieces.append((x.reshape(b - a, d), y))
            x_dset[lo:hi] = np.concatenate([p[0] for p in pieces])
            if y_dset is not None:
                y_dset[lo:hi] = relabel(np.concatenate([p[1] for p in pieces]))
        return n, x_dset.chunks


def convert_csv_parallel(src, dst, *, label_column=None, labels: str = "asis", delimiter: str = "auto",
                         header: bool | None = None, dtype="float32", task: str | None = None,
                         chunk_rows: int | None = None, block_bytes: int = BLOCK_BYTES,
                         collective: Collective | None = None) -> dict:
    """Convert a numeric CSV file to a dense pgd dataset on all ranks of ``collective``.

    Options as :func:`pgd.data.convert.convert_file` (``labels``: ``asis``, ``pm1`` or ``classes`` of two
    numbers; text labels are for the serial converter). Values equal the serial converter's; the output
    bytes are the same for any number of ranks.

    Returns
    -------
    dict
        The same on every rank: path, n, d, dtype, chunks, task, source, source_format, notes, ranks, seconds.
    """
    group = collective or Collective()
    src, dst = os.fspath(src), os.fspath(dst)
    notes, error, layout = [], None, None
    try:
        if _kernels() is None:
            raise InputError("parallel CSV conversion needs numba (pip install numba)")
        if labels not in LABEL_MODES or task not in (None, *TASKS):
            raise InputError(f"labels must be one of {', '.join(LABEL_MODES)} and task regression or binary")
        if label_column == NO_LABELS and (labels != "asis" or task):
            raise InputError("--label-column none converts features only: --labels and --task do not apply")
        if not os.path.isfile(src):
            raise InputError(f"source file not found: {src}")
        refuse_same_files({"the source file": src}, {"OUT": dst})
        dtype = float_dtype(dtype)
        delimiter = resolve_delimiter(src, delimiter, notes)
        rows, _, _, header, ncols, label, features = csv_layout(src, label_column, delimiter, header, notes)
        rows.close()
        layout = (delimiter, ncols, features, label)
    except InputError as exc:
        error = str(exc)
    group.agree(error)
    directory = _shared_directory(dst, group)
    try:
        return _convert_in(directory, src, dst, group, layout, header, labels, task, dtype, chunk_rows,
                           block_bytes, notes)
    finally:
        for name in ("x", "y"):
            if os.path.exists(_part(directory, group.rank, name)):
                os.unlink(_part(directory, group.rank, name))
        group.allgather(None)
        if group.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)


def _convert_in(directory, src, dst, group, layout, header, labels, task, dtype, chunk_rows, block_bytes,
                notes) -> dict:
    began = time.perf_counter()
    data_start, header_lines = _data_start(src, ord(layout[0]), bool(header), _kernels()[0])
    start, stop = line_aligned_range(src, group.size, group.rank, data_start)
    lines = group.allgather(_count_lines(src, start, stop, block_bytes))
    first_line = header_lines + sum(lines[:group.rank]) + 1
    mine = _rank_parse(src, start, stop, first_line, layout, directory, group.rank, dtype, block_bytes)
    mine["parse_seconds"] = time.perf_counter() - began
    group.wait_idle()
    gathered = group.allgather(mine)
    group.agree(next((p["error"] for p in gathered if p["error"]), None))
    counts = [p["rows"] for p in gathered]
    labelled = layout[3] is not None
    outcome, chunks, written = None, None, time.perf_counter()
    try:
        if sum(counts) == 0:
            raise InputError(f"{src} has no data rows")
        if len(layout[2]) == 0:
            raise InputError(f"{src} has no feature columns (is --delimiter right?)")
        mapping, attrs = None, {"source": src, "source_format": "csv", "converter": "pgd"}
        if labelled:
            mapping, task, label_attrs = label_mapping(src, labels, task, _merge_labels(gathered), notes)
            attrs.update(task=task, **label_attrs)
        if group.rank == 0:
            _, chunks = _write_dense(dst, directory, counts, len(layout[2]), dtype, labelled, mapping, attrs,
                                     chunk_rows, block_bytes)
    except InputError as exc:
        outcome = str(exc)
    write_seconds = time.perf_counter() - written
    group.wait_idle()
    finals = group.allgather((outcome, chunks, write_seconds))
    group.agree(next((o for o, _, _ in finals if o), None))
    return {"path": dst, "n": sum(counts), "d": len(layout[2]), "dtype": dtype.name,
            "chunks": list(finals[0][1]), "task": task if labelled else None, "source": src, "source_format": "csv",
            "notes": notes, "ranks": group.size,
            "seconds": {"parse_max": round(max(p["parse_seconds"] for p in gathered), 3),
                        "write": round(finals[0][2], 3)}}
