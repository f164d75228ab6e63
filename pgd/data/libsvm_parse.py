"""Parsing blocks of LIBSVM / SVMlight text into CSR pieces, compiled (numba) or vectorised (NumPy).

A block is bytes that end at a line boundary. Each non-blank line is ``label [qid:Q] index:value ...``
with an optional ``# comment``; blank and comment-only lines give no row. Both engines return the same
:class:`LibsvmBlock` for the same bytes: numbers are correctly rounded (the numba engine takes the exact
fast path ``m * 10**e`` with ``m <= 2**53`` and ``|e| <= 22``, and the C library's ``strtod`` for the
rest; NumPy uses Python's float parser), indices are as written (the caller applies the 1- or 0-based
offset). Syntax errors raise :class:`LibsvmSyntaxError` with the block-local line number.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

ENGINES = ("auto", "numba", "numpy")
_WHITESPACE = b" \t\r\n\x0b\x0c"
ERR_LABEL, ERR_FEATURE = 1, 2


class LibsvmSyntaxError(ValueError):
    """A malformed line: ``line`` is 1-based within the block, ``token`` the offending text."""

    def __init__(self, line: int, kind: int, token: str):
        self.line, self.kind, self.token = line, kind, token
        super().__init__(describe_error(kind, token))


def describe_error(kind: int, token: str) -> str:
    """What is wrong with ``token``, without the place."""
    if kind == ERR_LABEL:
        return f"label {token!r} is not a number"
    return f"bad feature {token!r}, expected index:value"


@dataclass
class LibsvmBlock:
    """The rows of one block: labels, non-zeros per row, the 1-based line of each row, and the
    row-after-row indices (as written) and values."""

    labels: np.ndarray  # (m,) float64
    row_nnz: np.ndarray  # (m,) int64
    row_line: np.ndarray  # (m,) int64, 1-based line within the block
    indices: np.ndarray  # (k,) int64
    values: np.ndarray  # (k,) float64
    lines: int  # newline characters in the block


# ---------------------------------------------------------------------------------------------- numba


_NUMBA_KERNEL = None


def numba_kernel():
    """The compiled parse kernel (built on first use, cached on disk), or None without numba."""
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is None:
        try:
            from pgd.data.libsvm_kernel import parse_kernel  # noqa: PLC0415 - numba is optional (NumPy fallback)
            _NUMBA_KERNEL = parse_kernel
        except ImportError:
            _NUMBA_KERNEL = False
    return _NUMBA_KERNEL or None


class Workspace:
    """Output arrays reused from block to block (a block's results are views into them, valid until
    the next parse with the same workspace)."""

    def __init__(self):
        self.rows = self.values = None

    def take(self, rows: int, nnz: int) -> tuple[np.ndarray, ...]:
        if self.rows is None or len(self.rows[0]) < rows:
            self.rows = (np.empty(rows), np.empty(rows, np.int64), np.empty(rows, np.int64))
        if self.values is None or len(self.values[0]) < nnz:
            self.values = (np.empty(nnz, np.int64), np.empty(nnz))
        return (*self.rows, *self.values)


def _parse_numba(buf: np.ndarray, workspace: Workspace) -> LibsvmBlock:
    kernel = numba_kernel()
    if len(buf) and buf[-1] == 10:
        text, n, last_newline = buf, len(buf) - 1, 1  # the final newline is the sentinel
    else:
        text, n, last_newline = np.empty(len(buf) + 1, dtype=np.uint8), len(buf), 0
        text[:-1], text[-1] = buf, 10
    # A row takes at least 2 bytes ("1\n"), a feature at least 4 (" 1:2"): bounds that cost no resident
    # memory beyond what the kernel writes, and spare a counting pass.
    labels, row_nnz, row_line, indices, values = workspace.take(len(buf) // 2 + 2, len(buf) // 4 + 2)
    m, k, lines, kind, line, s, e = kernel(text, n, labels, row_nnz, row_line, indices, values)
    if kind:
        raise LibsvmSyntaxError(int(line), int(kind), bytes(text[s:e]).decode("utf-8", "replace"))
    return LibsvmBlock(labels[:m], row_nnz[:m], row_line[:m], indices[:k], values[:k], int(lines) + last_newline)


# ---------------------------------------------------------------------------------------------- NumPy


def _blank_comments(a: np.ndarray, newline: np.ndarray) -> None:
    """Overwrite every ``#`` and the rest of its line with spaces, in place."""
    hashes = a == 35
    if not hashes.any():
        return
    events = np.flatnonzero(hashes | newline)
    last = np.full(len(a), -1, dtype=np.int64)
    last[events] = events
    last = np.maximum.accumulate(last)
    inside = (last >= 0) & hashes[np.maximum(last, 0)]
    a[inside] = 32


def _tokens(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end byte offsets of the whitespace-separated tokens."""
    space = np.isin(a, np.frombuffer(_WHITESPACE, dtype=np.uint8))
    edges = np.diff(np.concatenate(([0], (~space).view(np.int8), [0])).astype(np.int8))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _first_error(a, starts, ends, line_of, bad_label, bad_feature) -> LibsvmSyntaxError | None:
    bad = [(starts[bad_label][0], ERR_LABEL)] if bad_label.any() else []
    bad += [(starts[bad_feature][0], ERR_FEATURE)] if bad_feature.any() else []
    if not bad:
        return None
    start, kind = min(bad)
    token = int(np.searchsorted(starts, start))
    text = bytes(a[starts[token]:ends[token]]).decode("utf-8", "replace")
    return LibsvmSyntaxError(int(line_of[token]) + 1, kind, text)


def _blank_ranges(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Overwrite the byte ranges ``[starts[j], ends[j])`` with spaces, in place."""
    if len(starts):
        marks = np.zeros(len(a) + 1, dtype=np.int64)
        np.add.at(marks, starts, 1)
        np.add.at(marks, ends, -1)
        a[np.cumsum(marks[:-1]) > 0] = 32


def _numbers_slowly(a: np.ndarray, starts, ends, ok: np.ndarray) -> np.ndarray:
    """The numbers of every token (colons already blanked) by Python's float; ``ok`` is cleared for a
    token holding something else (underscores and hexadecimal too, which the numba engine refuses)."""
    values = []
    for j, (s, e) in enumerate(zip(starts, ends)):
        for part in bytes(a[s:e]).split():
            try:
                if b"_" in part or b"x" in part.lower():
                    raise ValueError(part)
                values.append(float(part))
            except ValueError:
                ok[j] = False
                values.append(0.0)
    return np.array(values)


def _structure(a, starts, ends, first) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each token's first colon, and which tokens are malformed: a label has no colon, a feature is
    ``digits:something`` with one colon and at most 15 digits."""
    colon_before = np.concatenate(([0], np.cumsum(a == 58, dtype=np.int32)))
    colons = colon_before[ends] - colon_before[starts]
    split_at = _first_colon(a, starts, ends, colons)
    nondigit_before = np.concatenate(([0], np.cumsum((a < 48) | (a > 57), dtype=np.int32)))
    feature_ok = (colons == 1) & (split_at > starts) & (split_at - starts <= 15) & (split_at + 1 < ends)
    feature_ok &= nondigit_before[split_at] == nondigit_before[starts]
    return split_at, ~first & ~feature_ok, first & (colons > 0)


def _parse_numpy(buf: np.ndarray) -> LibsvmBlock:
    a = np.array(buf, dtype=np.uint8, copy=True)
    newline = a == 10
    _blank_comments(a, newline)
    starts, ends = _tokens(a)
    line_of = np.cumsum(newline, dtype=np.int32)[starts] - newline[starts]  # 0-based line of each token
    first = np.ones(len(starts), dtype=bool)
    first[1:] = line_of[1:] != line_of[:-1]
    head = [a[np.minimum(starts + j, len(a) - 1)] for j in range(4)]
    qid = ~first & (ends - starts >= 4) & (head[0] == 113) & (head[1] == 105) & (head[2] == 100) & (head[3] == 58)
    _blank_ranges(a, starts[qid], ends[qid])
    keep = ~qid
    starts, ends, line_of, first = starts[keep], ends[keep], line_of[keep], first[keep]
    split_at, bad_feature, bad_label = _structure(a, starts, ends, first)
    error = _first_error(a, starts, ends, line_of, bad_label, bad_feature)
    if error is not None:
        raise error
    a[split_at[~first]] = 32
    parts = np.where(first, 1, 2)
    position = np.cumsum(parts) - parts
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # NumPy < 2.3 warns where newer ones raise
            numbers = np.fromstring(a.tobytes(), dtype=np.float64, sep=" ")
    except ValueError:
        numbers = np.empty(0)
    careful = bool(np.any((a == 95) | (a == 120) | (a == 88)))  # "_", "x", "X": Python's float rules differ
    if careful or len(numbers) != int(parts.sum()):
        ok = np.ones(len(starts), dtype=bool)
        numbers = _numbers_slowly(a, starts, ends, ok)
        a[split_at[~first]] = 58  # the colons back, for the message
        error = _first_error(a, starts, ends, line_of, first & ~ok, ~first & ~ok)
        if error is not None:
            raise error
    feature_at = position[~first]
    row_of_token = np.cumsum(first) - 1
    row_nnz = np.bincount(row_of_token[~first], minlength=int(first.sum())).astype(np.int64)
    return LibsvmBlock(numbers[position[first]], row_nnz, line_of[first].astype(np.int64) + 1,
                       numbers[feature_at].astype(np.int64), numbers[feature_at + 1],
                       int(np.count_nonzero(newline)))


def _first_colon(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, colons: np.ndarray) -> np.ndarray:
    """Offset of each token's first colon (its end when it has none)."""
    positions = np.flatnonzero(a == 58)
    if not len(positions):
        return ends.copy()
    at = np.minimum(np.searchsorted(positions, starts), len(positions) - 1)
    return np.where(colons > 0, positions[at], ends)


# ---------------------------------------------------------------------------------------------- entry


def resolve_engine(engine: str = "auto") -> str:
    """``auto`` is numba when importable, else NumPy; asking for numba without it is an error."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "numpy":
        return engine
    if numba_kernel() is None:
        if engine == "numba":
            raise ImportError("numba is not installed (pip install numba)")
        return "numpy"
    return "numba"


def parse_libsvm_block(buf, engine: str = "auto", workspace: Workspace | None = None) -> LibsvmBlock:
    """Parse LIBSVM text (bytes or a uint8 array ending at a line boundary) into a :class:`LibsvmBlock`.

    With a :class:`Workspace` (numba engine), output arrays are reused: the result is valid until the
    next call with the same workspace.

    Raises
    ------
    LibsvmSyntaxError
        At the first malformed label or feature, with its block-local line.
    """
    array = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else buf
    if resolve_engine(engine) == "numba":
        return _parse_numba(array, workspace or Workspace())
    return _parse_numpy(array)
