"""Part files: the rows one rank parsed, spooled as raw arrays until rank 0 writes the one output file.

A rank's part is four flat files in a shared directory: ``R.nnz`` (int64 non-zeros per row), ``R.labels``
(float64), ``R.indices`` (int64, 0-based) and ``R.values`` (the output value type). :class:`PartReader`
reads the parts of all ranks back, in rank order, one bounded piece at a time.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

ROW_BLOCK = 1 << 20  # rows of per-row arrays read at a time


def part_path(directory: str, rank: int, field: str) -> str:
    return os.path.join(directory, f"{rank}.{field}")


class PartWriter:
    """Append a rank's parsed rows to its part files."""

    def __init__(self, directory: str, rank: int, dtype):
        self.dtype = np.dtype(dtype)
        self.files = {name: open(part_path(directory, rank, name), "wb")
                      for name in ("nnz", "labels", "indices", "values")}

    def write(self, row_nnz, labels, indices, values) -> None:
        for name, array, dtype in (("nnz", row_nnz, np.int64), ("labels", labels, np.float64),
                                   ("indices", indices, np.int64), ("values", values, self.dtype)):
            self.files[name].write(memoryview(np.ascontiguousarray(array, dtype=dtype)))  # no copy when typed

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def remove_parts(directory: str, rank: int) -> None:
    """Delete a rank's part files (missing ones are fine)."""
    for name in ("nnz", "labels", "indices", "values"):
        try:
            os.unlink(part_path(directory, rank, name))
        except FileNotFoundError:
            pass


def _read(path: str, dtype, start: int, count: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    return np.fromfile(path, dtype=dtype, count=count, offset=start * dtype.itemsize)


class PartReader:
    """Rows of all parts in order. ``counts`` is ``[(rows, nnz), ...]`` per rank."""

    def __init__(self, directory: str, counts: list[tuple[int, int]], dtype):
        self.directory, self.counts, self.dtype = directory, counts, np.dtype(dtype)

    def _field(self, rank: int, name: str) -> str:
        return part_path(self.directory, rank, name)

    def pieces(self, max_nnz: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(row_nnz, labels, indices, values)`` pieces of whole rows, each with at most ``max_nnz``
        non-zeros unless a single row has more."""
        for rank, (rows, _) in enumerate(self.counts):
            value_at = 0
            for lo in range(0, rows, ROW_BLOCK):
                count = min(ROW_BLOCK, rows - lo)
                row_nnz = _read(self._field(rank, "nnz"), np.int64, lo, count)
                labels = _read(self._field(rank, "labels"), np.float64, lo, count)
                ends = np.cumsum(row_nnz)
                a = 0
                while a < count:
                    base = int(ends[a - 1]) if a else 0
                    b = max(a + 1, int(np.searchsorted(ends, base + max_nnz, side="right")))
                    k = int(ends[b - 1]) - base
                    yield (row_nnz[a:b], labels[a:b], _read(self._field(rank, "indices"), np.int64, value_at, k),
                           _read(self._field(rank, "values"), self.dtype, value_at, k))
                    value_at, a = value_at + k, b

    def row_blocks(self, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield the rows in blocks of exactly ``block_rows`` global rows (the last may be shorter),
        whatever the part boundaries."""
        buffered: list[tuple] = []
        held = 0
        for piece in self.pieces(max_nnz=1 << 22):
            buffered.append(piece)
            held += len(piece[0])
            while held >= block_rows:
                block, buffered = _take(buffered, block_rows)
                held -= block_rows
                yield block
        if held:
            yield _take(buffered, held)[0]


def _take(pieces: list[tuple], rows: int) -> tuple[tuple, list[tuple]]:
    """The first ``rows`` rows of the buffered pieces, and the pieces that remain."""
    taken, rest, need = [], [], rows
    for index, (row_nnz, labels, indices, values) in enumerate(pieces):
        if need == 0:
            rest = pieces[index:]
            break
        if len(row_nnz) <= need:
            taken.append((row_nnz, labels, indices, values))
            need -= len(row_nnz)
            continue
        k = int(row_nnz[:need].sum())
        taken.append((row_nnz[:need], labels[:need], indices[:k], values[:k]))
        rest = [(row_nnz[need:], labels[need:], indices[k:], values[k:])] + pieces[index + 1:]
        need = 0
        break
    joined = tuple(np.concatenate([t[j] for t in taken]) for j in range(4))
    return joined, rest
