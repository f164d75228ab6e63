"""Describing a dataset file: layout, attributes and (optionally) a bounded-memory scan.

A scan may cover a row slab only (``start``, ``stop``), so that MPI ranks can scan their slabs
and rank 0 merges the parts with :func:`combine_descriptions`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from pgd.data.csr import inspect_csr, scan_csr
from pgd.data.format import DEFAULT_X_KEY, DEFAULT_Y_KEY, inspect_dataset, open_h5
from pgd.data.slab import count_nonfinite, default_block_rows, iter_row_blocks

MAX_DISTINCT = 20  # label values listed exactly up to this many distinct values
MAX_ATTR_ITEMS = 16  # array attributes longer than this are summarised, not listed
SCAN_BLOCK_BYTES = 16 << 20  # rows read per scan block: fast, and two blocks in memory stay small


def _small_attrs(attrs: dict) -> dict:
    return {k: (v if not isinstance(v, list) or len(v) <= MAX_ATTR_ITEMS else f"<{len(v)} values>")
            for k, v in attrs.items()}


def _label_summary(count: int, total: float, low, high, values: set | None) -> dict:
    """Label statistics from their additive parts (count, sum, min, max, distinct values)."""
    listed = sorted(values) if values is not None else None
    return {
        "count": count,
        "min": low, "max": high,
        "mean": total / count if count else None,
        "n_unique": len(listed) if listed is not None else f">{MAX_DISTINCT}",
        "values": listed,
        "is_binary01": bool(count) and listed is not None and set(listed) <= {0.0, 1.0},
        "is_pm1": bool(count) and listed is not None and set(listed) <= {-1.0, 1.0},
    }


def _merge_values(values: set | None, new) -> set | None:
    if values is None or new is None:
        return None
    merged = values | set(new)
    return merged if len(merged) <= MAX_DISTINCT else None


class _LabelStats:
    """Additive label statistics over blocks (finite values only)."""

    def __init__(self):
        self.count, self.total, self.low, self.high, self.values = 0, 0.0, None, None, set()

    def add(self, y_block) -> None:
        finite = y_block[np.isfinite(y_block)].astype(np.float64) if y_block.dtype.kind == "f" \
            else y_block.astype(np.float64)
        if finite.size:
            self.count += finite.size
            self.total += float(finite.sum())
            self.low = min(float(finite.min()), self.low) if self.low is not None else float(finite.min())
            self.high = max(float(finite.max()), self.high) if self.high is not None else float(finite.max())
            self.values = _merge_values(self.values, np.unique(finite).tolist() if self.values is not None else None)

    def summary(self) -> dict:
        return _label_summary(self.count, self.total, self.low, self.high, self.values)


def _scan(meta, start: int, stop: int, block_rows: int | None, locking: str) -> dict:
    non_finite, first_row = 0, -1
    labels = _LabelStats()
    for offset, x_block, y_block in iter_row_blocks(meta, start, stop, block_rows, locking=locking):
        bad, first = count_nonfinite(x_block, y_block)
        non_finite += bad
        if first >= 0 and first_row < 0:
            first_row = offset + first
        if y_block is not None:
            labels.add(y_block)
    return {"scan": {"start": start, "stop": stop, "rows": stop - start},
            "non_finite": non_finite, "first_non_finite_row": first_row,
            "labels": labels.summary() if meta.y_key else None}


def describe_csr_dataset(path, x_key: str = DEFAULT_X_KEY, y_key: str | None = DEFAULT_Y_KEY, *, scan: bool = True,
                         locking: str = "best-effort", block: int = 1 << 22) -> dict:
    """Describe a sparse (CSR) dataset: :func:`pgd.data.csr.scan_csr`'s facts (nnz, density, non-zeros per
    row, index width; with ``scan``, the whole file is checked in blocks) and the label summary."""
    meta = inspect_csr(path, x_key, y_key, require_y=False, locking=locking)
    desc = {"path": os.fspath(path), "sparse": True, "x_key": meta.x_key, "y_key": meta.y_key, "task": meta.task,
            "n": meta.n, "d": meta.d, "nnz": meta.nnz, "density": meta.density, "dtype": meta.dtype.name,
            "index_dtype": meta.index_dtype.name, "index_bits": 8 * meta.index_dtype.itemsize, "nbytes": meta.nbytes,
            "format_version": meta.attrs.get("pgd_format"), "attrs": _small_attrs(meta.attrs)}
    if not scan:
        return desc
    desc.update(scan_csr(meta, block, locking))
    desc["non_finite"] = desc.pop("nonfinite")
    labels = _LabelStats()
    if meta.y_key:
        with open_h5(meta.path, locking) as h5:
            for lo in range(0, meta.n, block):
                labels.add(h5[meta.y_key][lo:lo + block].reshape(-1))
    desc["labels"] = labels.summary() if meta.y_key else None
    return desc


def format_csr_description(desc: dict) -> str:
    """``pgd data info``'s text for :func:`describe_csr_dataset`."""
    lines = [f"file:   {desc['path']}  (pgd format {desc['format_version'] or 'unset'}, "
             f"task {desc['task'] or 'unset'})",
             f"X:      /{desc['x_key']} sparse CSR {desc['n']} x {desc['d']}, nnz {desc['nnz']} (density "
             f"{desc['density']:.3g}), {desc['dtype']} values, {desc['index_dtype']} indices "
             f"({desc['index_bits']}-bit), {desc['nbytes'] / 2**20:.3g} MiB of CSR arrays"]
    if "row_nnz_min" in desc:
        lines.append(f"rows:   non-zeros per row min {desc['row_nnz_min']}, mean {desc['row_nnz_mean']:.4g}, max "
                     f"{desc['row_nnz_max']}; {desc['empty_rows']} empty rows; {desc['non_finite']} non-finite values")
    lines.append(f"y:      /{desc['y_key']}" if desc["y_key"] else "y:      none")
    labels = desc.get("labels")
    if labels and labels["count"]:
        kind = "binary 0/1" if labels["is_binary01"] else "-1/+1" if labels["is_pm1"] else None
        shown = f" {labels['values']}" if labels["values"] is not None else ""
        lines.append(f"labels: min {labels['min']:g}, max {labels['max']:g}, mean {labels['mean']:.4g}, "
                     f"{labels['n_unique']} distinct{shown}" + (f" ({kind})" if kind else ""))
    return "\n".join(lines)


def describe_dataset(path, x_key: str = DEFAULT_X_KEY, y_key: str | None = DEFAULT_Y_KEY, *,
                     scan: bool = True, locking: str = "best-effort", start: int = 0,
                     stop: int | None = None, block_rows: int | None = None) -> dict:
    """Describe a dataset file as a JSON-friendly dict.

    Parameters
    ----------
    path : str or path-like
        HDF5 dataset; ``y_key`` may be absent.
    x_key, y_key : str
        Dataset names.
    scan : bool
        Also scan rows ``[start, stop)`` for non-finite values and label statistics.
    locking : str
        See :func:`pgd.data.open_h5`.
    start, stop : int
        Row slab to scan (default: all rows).
    block_rows : int, optional
        Rows read per block (default: about 16 MiB).

    Returns
    -------
    dict
        path, n, d, dtype, y_dtype, chunks, chunk_bytes, compression, task, format_version, attrs;
        with ``scan``: scan range, non_finite, first_non_finite_row (global row, -1 if none) and
        labels {count, min, max, mean, n_unique, values, is_binary01, is_pm1}.
    """
    meta = inspect_dataset(path, x_key, y_key, require_y=False, locking=locking)
    with open_h5(meta.path, locking) as h5:
        x = h5[meta.x_key]
        compression, compression_opts = x.compression, x.compression_opts
    desc = {
        "path": os.fspath(path), "x_key": meta.x_key, "y_key": meta.y_key,
        "n": meta.n, "d": meta.d, "dtype": meta.dtype.name,
        "y_dtype": meta.y_dtype.name if meta.y_dtype is not None else None,
        "chunks": list(meta.chunks) if meta.chunks else None,
        "chunk_bytes": math.prod(meta.chunks) * meta.dtype.itemsize if meta.chunks else None,
        "compression": compression, "compression_opts": compression_opts,
        "task": meta.task, "format_version": meta.attrs.get("pgd_format"),
        "attrs": _small_attrs(meta.attrs),
    }
    if scan:
        stop = meta.n if stop is None else stop
        if not 0 <= start <= stop <= meta.n:
            raise ValueError(f"scan range [{start}, {stop}) is outside [0, {meta.n}]")
        block_rows = block_rows or default_block_rows(meta.d, meta.dtype.itemsize, SCAN_BLOCK_BYTES)
        desc.update(_scan(meta, start, stop, block_rows, locking))
    return desc


def combine_descriptions(parts: list[dict]) -> dict:
    """Merge descriptions of row slabs of one file into the description of their union.

    Counts add, min/max/mean combine, distinct label values merge, and the first non-finite row
    is the smallest global one.
    """
    combined = dict(parts[0])
    if "scan" not in combined:
        return combined
    firsts = [p["first_non_finite_row"] for p in parts if p["first_non_finite_row"] >= 0]
    combined.update(
        scan={"start": min(p["scan"]["start"] for p in parts), "stop": max(p["scan"]["stop"] for p in parts),
              "rows": sum(p["scan"]["rows"] for p in parts)},
        non_finite=sum(p["non_finite"] for p in parts),
        first_non_finite_row=min(firsts, default=-1),
    )
    label_parts = [p["labels"] for p in parts if p["labels"] and p["labels"]["count"]]
    if combined["labels"] is not None:
        values: set | None = set()
        for part in label_parts:
            values = _merge_values(values, part["values"])
        combined["labels"] = _label_summary(
            sum(p["count"] for p in label_parts),
            sum(p["count"] * p["mean"] for p in label_parts),
            min((p["min"] for p in label_parts), default=None),
            max((p["max"] for p in label_parts), default=None),
            values)
    return combined


def format_description(desc: dict) -> str:
    """Render a description as compact multi-line text for ``pgd data info``."""
    chunk = (f"chunks {tuple(desc['chunks'])} ({desc['chunk_bytes'] / 1024:.0f} KiB)"
             if desc["chunks"] else "contiguous")
    lines = [
        f"file:   {desc['path']}  (pgd format {desc['format_version'] or 'unset'}, "
        f"task {desc['task'] or 'unset'})",
        f"X:      /{desc['x_key']} {desc['n']} x {desc['d']} {desc['dtype']}, {chunk}, "
        f"compression {desc['compression'] or 'none'}",
        f"y:      /{desc['y_key']} {desc['y_dtype']}" if desc["y_key"] else "y:      none",
    ]
    if "scan" in desc:
        scan = desc["scan"]
        bad = desc["non_finite"]
        where = f" (first in row {desc['first_non_finite_row']})" if bad else ""
        lines.append(f"scan:   rows {scan['start']}:{scan['stop']}, {bad} non-finite values{where}")
        labels = desc["labels"]
        if labels and labels["count"]:
            kind = "binary 0/1" if labels["is_binary01"] else "-1/+1" if labels["is_pm1"] else None
            shown = f" {labels['values']}" if labels["values"] is not None else ""
            lines.append(f"labels: min {labels['min']:g}, max {labels['max']:g}, mean {labels['mean']:.4g}, "
                         f"{labels['n_unique']} distinct{shown}" + (f" ({kind})" if kind else ""))
    other = {k: v for k, v in desc["attrs"].items() if k not in ("pgd_format", "task")}
    if other:
        lines.append("attrs:  " + ", ".join(f"{k}={v}" for k, v in other.items()))
    return "\n".join(lines)
