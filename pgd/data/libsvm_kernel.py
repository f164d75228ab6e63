"""The compiled LIBSVM block kernel (numba; imported only where numba is installed).

Numbers take the exact fast path ``m * 10**e`` (``m <= 2**53``, ``|e| <= 22``: both exact, one rounding);
every other number goes to the C library's ``strtod``, which rounds correctly, so results equal Python's
``float``. The kernel is compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

ERR_LABEL, ERR_FEATURE = 1, 2  # the codes of pgd.data.libsvm_parse
_POWERS = np.array([10.0 ** k for k in range(23)])
# Resolved by name when the kernel is linked, so the on-disk cache holds no process-specific address.
_strtod = types.ExternalFunction("strtod", types.float64(types.intp, types.intp))


@numba.njit(cache=True, nogil=True)
def _is_space(c):
    return c == 32 or c == 9 or c == 13 or c == 10 or c == 11 or c == 12


@numba.njit(cache=True, nogil=True)
def _number(buf, s, e, end_box):
    """(value, ok) of buf[s:e]: exact fast path, else strtod; ok False when not a whole number."""
    i, negative = s, False
    if i < e and (buf[i] == 43 or buf[i] == 45):
        negative = buf[i] == 45
        i += 1
    mantissa, digits, exponent, seen, exact = np.uint64(0), 0, 0, False, True
    while i < e and 48 <= buf[i] <= 57:
        seen = True
        if digits < 19:
            if mantissa or buf[i] != 48:
                mantissa = mantissa * np.uint64(10) + np.uint64(buf[i] - 48)
                digits += 1
        else:
            exact, exponent = False, exponent + 1
        i += 1
    if i < e and buf[i] == 46:
        i += 1
        while i < e and 48 <= buf[i] <= 57:
            seen = True
            if digits < 19:
                if mantissa or buf[i] != 48:
                    mantissa = mantissa * np.uint64(10) + np.uint64(buf[i] - 48)
                    digits += 1
                exponent -= 1
            else:
                exact = False
            i += 1
    if seen and i < e and (buf[i] == 101 or buf[i] == 69):
        i += 1
        sign, value, any_digit = 1, 0, False
        if i < e and (buf[i] == 43 or buf[i] == 45):
            sign = -1 if buf[i] == 45 else 1
            i += 1
        while i < e and 48 <= buf[i] <= 57:
            any_digit = True
            value = min(value * 10 + (buf[i] - 48), 100000)
            i += 1
        if not any_digit:
            return 0.0, False
        exponent += sign * value
    if i == e and seen and exact and mantissa <= np.uint64(9007199254740992) and -22 <= exponent <= 22:
        result = float(mantissa)
        result = result * _POWERS[exponent] if exponent >= 0 else result / _POWERS[-exponent]
        return (-result if negative else result), True
    if i == e and seen and mantissa == 0:
        return (-0.0 if negative else 0.0), True
    first = buf[s + 1] if s + 1 < e and (buf[s] == 43 or buf[s] == 45) else buf[s]
    if not seen and not (first == 110 or first == 78 or first == 105 or first == 73):
        return 0.0, False
    for j in range(s, e):  # no hexadecimal floats
        if buf[j] == 120 or buf[j] == 88:
            return 0.0, False
    value = _strtod(buf.ctypes.data + s, end_box.ctypes.data)
    return value, end_box[0] - buf.ctypes.data == e


@numba.njit(cache=True, nogil=True)
def _feature(buf, s, colon, e, end_box):
    """(index, value, ok) of the token ``buf[s:e]`` whose first colon is at ``colon`` (-1: none):
    1 to 15 digits, a colon, a number."""
    if colon <= s or colon + 1 >= e or colon - s > 15:
        return 0, 0.0, False
    index = 0
    for j in range(s, colon):
        if not 48 <= buf[j] <= 57:
            return 0, 0.0, False
        index = index * 10 + (buf[j] - 48)
    value, ok = _number(buf, colon + 1, e, end_box)
    return index, value, ok


@numba.njit(cache=True, nogil=True)
def parse_kernel(buf, n, labels, row_nnz, row_line, indices, values):
    """Parse ``buf[:n]`` (``buf[n]`` must be a newline: the sentinel that stops strtod).

    Returns (rows, nnz, lines, error kind, error line, error start, error end)."""
    i, line, m, k = 0, 1, 0, 0
    end_box = np.zeros(1, np.int64)
    while i < n:
        while i < n and _is_space(buf[i]) and buf[i] != 10:
            i += 1
        if i >= n:
            break
        if buf[i] == 10:
            line, i = line + 1, i + 1
            continue
        if buf[i] == 35:
            while i < n and buf[i] != 10:
                i += 1
            continue
        s = i
        while i < n and not _is_space(buf[i]) and buf[i] != 35:
            i += 1
        value, ok = _number(buf, s, i, end_box)
        if not ok:
            return m, k, line, ERR_LABEL, line, s, i
        labels[m], row_line[m], first = value, line, k
        while True:
            while i < n and _is_space(buf[i]) and buf[i] != 10:
                i += 1
            if i >= n or buf[i] == 10 or buf[i] == 35:
                break
            s = i
            colon = -1
            while i < n and not _is_space(buf[i]) and buf[i] != 35:
                if buf[i] == 58 and colon < 0:
                    colon = i
                i += 1
            if colon - s == 3 and buf[s] == 113 and buf[s + 1] == 105 and buf[s + 2] == 100:
                continue  # qid:...
            index, value, ok = _feature(buf, s, colon, i, end_box)
            if not ok:
                return m, k, line, ERR_FEATURE, line, s, i
            indices[k], values[k] = index, value
            k += 1
        row_nnz[m] = k - first
        m += 1
    return m, k, line - 1, 0, 0, 0, 0


@numba.njit(cache=True, nogil=True)
def _blank(buf, start, stop, delimiter):
    """True when ``buf[start:stop]`` holds only whitespace and delimiters (a row the csv path skips)."""
    for t in range(start, stop):
        c = buf[t]
        if not (c == 32 or c == 9 or c == 13 or c == delimiter):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def csv_count_kernel(buf, delimiter):
    """(rows, awkward) of a block of CSV text: non-blank lines, and whether it holds a quote or a lone
    carriage return (text the fast path leaves to the csv module)."""
    rows, start, awkward, n = 0, 0, False, len(buf)
    for i in range(n + 1):
        if i == n or buf[i] == 10:
            if i > start and not _blank(buf, start, i, delimiter):
                rows += 1
            start = i + 1
        elif buf[i] == 34 or (buf[i] == 13 and i + 1 < n and buf[i + 1] != 10):
            awkward = True
    return rows, awkward


@numba.njit(cache=True, nogil=True)
def _trimmed(buf, start, stop):
    while start < stop and (buf[start] == 32 or buf[start] == 9):
        start += 1
    while stop > start and (buf[stop - 1] == 32 or buf[stop - 1] == 9 or buf[stop - 1] == 13):
        stop -= 1
    return start, stop


@numba.njit(cache=True, nogil=True)
def csv_kernel(buf, n, delimiter, ncols, out, row_line):
    """Parse the numeric CSV rows of ``buf[:n]`` (``buf[n]`` a newline) into ``out`` (rows, ncols).

    Returns (rows, lines, error): error 0, or 1 at the first row the fast path cannot take (wrong
    column count, a field that is not a plain number), which the caller re-parses with the csv module."""
    i, line, m = 0, 1, 0
    end_box = np.zeros(1, np.int64)
    while i < n:
        j = i
        while j < n and buf[j] != 10:
            j += 1
        if not _blank(buf, i, j, delimiter):
            column, s = 0, i
            while True:
                e = s
                while e < j and buf[e] != delimiter:
                    e += 1
                a, b = _trimmed(buf, s, e)
                if column >= ncols or a == b:
                    return m, line, 1
                value, ok = _number(buf, a, b, end_box)
                if not ok:
                    return m, line, 1
                out[m, column] = value
                column += 1
                if e >= j:
                    break
                s = e + 1
            if column != ncols:
                return m, line, 1
            row_line[m] = line
            m += 1
        line += 1
        i = j + 1
    return m, line - 1, 0
