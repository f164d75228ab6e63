"""A compiled fast path for numeric CSV text, used by :func:`pgd.data.convert.convert_file`.

The numba kernels (:mod:`pgd.data.libsvm_kernel`, sharing the LIBSVM number parser, which rounds exactly as
Python's ``float``) count the rows and parse blocks of plain numeric rows. Anything else (a quote, a lone
carriage return, a field that is not a plain number, a wrong column count) is handed back as a
:class:`SlowText` block for the ``csv`` module to parse, so the output and the error messages are those of
the csv path. Without numba, :func:`fast_csv_blocks` returns None and the csv path runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pgd.data.libsvm_convert import text_blocks

BLOCK_BYTES = 8 << 20


@dataclass
class SlowText:
    """A block the csv module must parse: its text and the file line number of its first line."""

    text: bytes
    first_line: int


def _kernels():
    try:
        from pgd.data.libsvm_kernel import csv_count_kernel, csv_kernel  # noqa: PLC0415 - numba is optional (csv-module fallback)
    except ImportError:
        return None
    return csv_count_kernel, csv_kernel


def _data_start(src: str, delimiter: int, skip_header: bool, count) -> tuple[int, int]:
    """Byte offset and lines before the first data row: after the first non-blank line when it is a
    header, else the file start."""
    if not skip_header:
        return 0, 0
    at = lines = 0
    with open(src, "rb") as handle:
        for raw in handle:
            at, lines = at + len(raw), lines + 1
            if count(np.frombuffer(raw, dtype=np.uint8), delimiter)[0]:
                return at, lines
    return at, lines


def fast_csv_blocks(src: str, delimiter: str, skip_header: bool, ncols: int, block_bytes: int | None = None
                    ) -> tuple[int, Iterator] | None:
    """``(rows, blocks)`` for a numeric CSV file, or None when the fast path does not apply.

    ``blocks`` yields ``(values (m, ncols) float64, lines (m,) int64)`` for blocks the kernel parsed, or a
    :class:`SlowText` for the csv module.
    """
    kernels = _kernels()
    if kernels is None or len(delimiter.encode()) != 1:
        return None
    count, parse = kernels
    block_bytes = block_bytes or BLOCK_BYTES
    code = delimiter.encode()[0]
    start, lines_before = _data_start(src, code, skip_header, count)
    stop = os.path.getsize(src)
    rows = 0
    for text in text_blocks(src, start, stop, block_bytes):
        found, awkward = count(text, code)
        if awkward:
            return None
        rows += found

    def blocks():
        line = lines_before
        for text in text_blocks(src, start, stop, block_bytes):
            if len(text) and text[-1] == 10:
                buf, n = text, len(text) - 1
            else:
                buf, n = np.append(text, np.uint8(10)), len(text)
            out = np.empty((int(np.count_nonzero(text == 10)) + 1, ncols))
            where = np.empty(len(out), dtype=np.int64)
            m, lines, error = parse(buf, n, code, ncols, out, where)
            if error:
                yield SlowText(text.tobytes(), line + 1)
                line += int(np.count_nonzero(text[:n] == 10)) + (1 if n else 0)
                continue
            yield out[:m], where[:m] + line
            line += lines

    return rows, blocks()
