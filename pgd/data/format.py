"""The pgd HDF5 dataset format: opening files and validating ``/X`` and ``/y``.

Conventions
-----------
A dataset file holds ``/X`` with shape ``(n, d)`` (float32 or float64 when written by pgd; any real
numeric type is accepted and converted on read), chunked by rows, and ``/y`` with shape ``(n,)`` (or the
column vector ``(n, 1)`` that many tools write).
Root attributes: ``pgd_format = 1`` and optionally ``task`` ("regression" or "binary").
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

import h5py
import numpy as np

from pgd.errors import InputError

FORMAT_VERSION = 1
DEFAULT_X_KEY = "X"
DEFAULT_Y_KEY = "y"
LOCKING_MODES = {"true": True, "false": False, "best-effort": "best-effort"}
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float; complex ("c") is refused
_LOCK_ERRNO = re.compile(r"unable to lock file, errno = (\d+)")
_TRUNCATED = re.compile(r"truncated file: eof = (\d+), .*stored_eof = (\d+)")


@dataclass(frozen=True)
class DatasetMeta:
    """What :func:`inspect_dataset` learned about a dataset file (no data read)."""

    path: str
    x_key: str
    y_key: str | None
    n: int
    d: int
    dtype: np.dtype
    y_dtype: np.dtype | None
    chunks: tuple | None
    task: str | None
    attrs: dict = field(default_factory=dict)

    @property
    def nbytes_per_row(self) -> int:
        """Bytes one row of X (and y) takes on disk, uncompressed."""
        y_bytes = self.y_dtype.itemsize if self.y_dtype is not None else 0
        return self.d * self.dtype.itemsize + y_bytes


def json_value(value):
    """Convert an HDF5 attribute value to a JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [json_value(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return json_value(value.item())
    return value


@contextlib.contextmanager
def open_h5(path, locking: str = "best-effort", what: str = "data file") -> Iterator[h5py.File]:
    """Open an HDF5 file read-only, turning open failures into one-line :class:`InputError`.

    Parameters
    ----------
    path : str or path-like
        File to open.
    locking : {"true", "false", "best-effort"}
        HDF5 file locking; where h5py lacks the ``locking`` argument, ``HDF5_USE_FILE_LOCKING``
        is set instead.
    what : str
        What the file is, for messages (``"data file"``, ``"model file"``).

    Yields
    ------
    h5py.File
    """
    if locking not in LOCKING_MODES:
        raise InputError(f"locking must be one of true, false, best-effort, got {locking!r}")
    path = os.fspath(path)
    try:
        try:
            h5 = h5py.File(path, "r", locking=LOCKING_MODES[locking])
        except TypeError:  # old h5py without the locking argument
            if locking != "best-effort":
                os.environ["HDF5_USE_FILE_LOCKING"] = "TRUE" if locking == "true" else "FALSE"
            h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except PermissionError:
        raise InputError(f"permission denied reading {path}: check the file's permissions") from None
    except IsADirectoryError:
        raise InputError(f"expected an HDF5 file, got a directory: {path}") from None
    except OSError as exc:
        raise InputError(_open_failure(path, str(exc), what)) from None
    try:
        yield h5
    finally:
        h5.close()


def _open_failure(path: str, message: str, what: str) -> str:
    """The one-line reason why HDF5 could not open ``path``, from HDF5's message."""
    lock = _LOCK_ERRNO.search(message)
    if lock and int(lock.group(1)) in (errno.EAGAIN, errno.EWOULDBLOCK):
        return (f"{path} is open for writing by another process (HDF5 holds a lock on it): wait until that "
                "process has finished writing it")
    if lock:
        return (f"cannot lock {path} ({os.strerror(int(lock.group(1)))}; a file system without locking?): "
                "retry with --hdf5-locking false or HDF5_USE_FILE_LOCKING=FALSE")
    if "truncated file" in message:
        sizes = _TRUNCATED.search(message)
        detail = f": {sizes.group(1)} bytes of {sizes.group(2)}" if sizes else ""
        return f"{path} is truncated{detail} (an incomplete copy or an interrupted write?)"
    return f"not an HDF5 file: {path} (expected a {what})"


def _read_attrs(h5: h5py.File) -> dict:
    """Root attributes as JSON-friendly values; unreadable ones are skipped."""
    attrs = {}
    for name in h5.attrs:
        try:
            attrs[name] = json_value(h5.attrs[name])
        except (OSError, TypeError, ValueError):
            continue
    return attrs


def _check_numeric(path: str, key: str, dtype: np.dtype) -> None:
    if dtype.kind not in _NUMERIC_KINDS:
        raise InputError(f"{path}: /{key} has dtype {dtype}, which is not real numeric; "
                         "store it as float32 or float64")


def check_not_empty(path: str, x_key: str, n: int, d: int) -> None:
    """One line when ``/X`` (dense or CSR) has no rows or no columns."""
    if n == 0:
        raise InputError(f"{path}: /{x_key} has no rows")
    if d == 0:
        raise InputError(f"{path}: /{x_key} has no columns")


def _dataset(h5: h5py.File, path: str, key: str) -> h5py.Dataset:
    link = h5.get(key, getlink=True)
    if link is None:
        keys = ", ".join(sorted(h5.keys())) or "none"
        raise InputError(f"{path}: no key '{key}' (keys in the file: {keys}); "
                         "choose another with --x-key/--y-key")
    try:
        obj = h5[key]
    except (KeyError, OSError):
        if isinstance(link, h5py.ExternalLink):
            target = f"an external link to {link.path} in {link.filename}"
        else:
            target = f"a link to {getattr(link, 'path', '?')}"
        raise InputError(f"{path}: /{key} is {target}, which does not exist") from None
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{path}: /{key} is a group, not a dataset")
    return obj


def inspect_dataset(path, x_key: str = DEFAULT_X_KEY, y_key: str | None = DEFAULT_Y_KEY,
                    require_y: bool = True, locking: str = "best-effort") -> DatasetMeta:
    """Validate a dataset file and return its :class:`DatasetMeta` without reading data.

    Parameters
    ----------
    path : str or path-like
        HDF5 file.
    x_key, y_key : str
        Dataset names; ``y_key=None`` means the file has no labels.
    require_y : bool
        If False, a missing ``y_key`` is allowed and ``meta.y_key`` is None.
    locking : str
        See :func:`open_h5`.

    Raises
    ------
    InputError
        For a missing or unreadable file, missing keys, wrong shapes, non-numeric data or no rows.
    """
    path = os.fspath(path)
    with open_h5(path, locking) as h5:
        x = _dataset(h5, path, x_key)
        if x.ndim != 2:
            raise InputError(f"{path}: /{x_key} must be 2-D (rows, features), got shape {x.shape}")
        _check_numeric(path, x_key, x.dtype)
        n, d = (int(s) for s in x.shape)
        if y_key is not None and (require_y or y_key in h5):
            y = _dataset(h5, path, y_key)
            if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):  # a column vector (n, 1) is fine
                raise InputError(f"{path}: /{y_key} must be 1-D (or one column), got shape {y.shape}")
            _check_numeric(path, y_key, y.dtype)
            if y.shape[0] != n:
                raise InputError(f"{path}: /{y_key} has {y.shape[0]} labels but /{x_key} has {n} rows")
            y_dtype = y.dtype
        else:
            y_key, y_dtype = None, None
        check_not_empty(path, x_key, n, d)
        attrs = _read_attrs(h5)
        task = attrs.get("task")
        return DatasetMeta(path=path, x_key=x_key, y_key=y_key, n=n, d=d, dtype=x.dtype,
                           y_dtype=y_dtype, chunks=x.chunks, task=str(task) if task else None,
                           attrs=attrs)
