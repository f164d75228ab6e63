"""Output files that are never half-written: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

import h5py

from pgd.errors import InputError

# v108 object headers store large attributes (true_w for big d) densely and stay readable by HDF5 >= 1.8.
LIBVER = ("v108", "v108")


def check_writable(path: str, what: str = "output") -> None:
    """Fail now, with a one-line reason, if ``path`` could not be written at the end of a run."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{what} path is a directory: {path}")
    if not os.path.isdir(directory):
        raise InputError(f"{what} directory does not exist: {directory}")
    try:
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".pgd-probe-", delete=True)
        probe.close()
    except OSError as error:
        raise InputError(f"cannot write {what} {path}: {error.strerror or error}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {what} {path}: permission denied")


def fsync_path(path: str) -> None:
    """Flush a closed file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
        try:  # make the rename itself durable
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@contextmanager
def atomic_h5_file(path: str):
    """Yield a new HDF5 file (HDF5 >= 1.8 format) that appears at ``path`` only if the block succeeds."""
    check_writable(path)
    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w", libver=LIBVER) as handle:
            yield handle
