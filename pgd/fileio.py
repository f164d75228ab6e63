"""Output files that are never half-written, never an input, and leave no temporary file behind.

Conventions
-----------
- An output is written to a temporary file in the target's directory, fsynced, and renamed onto the target
  only when complete: a crash keeps the old file (or none). On Linux the temporary file is unnamed
  (``O_TMPFILE``) until the moment it is renamed, so even a SIGKILL leaves nothing behind; elsewhere it is a
  hidden ``.NAME.*.tmp`` file, removed on every error.
- A failed write (disk full, quota, I/O error) is one :class:`pgd.errors.InputError` line naming the file;
  the old file is unchanged.
- :func:`refuse_same_files` runs before any command reads its data: no output may be the same file as an
  input or as another output (same resolved path, or same inode through a hard link).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager

import h5py

from pgd.errors import InputError

# v108 object headers store large attributes (true_w for big d) densely and stay readable by HDF5 >= 1.8.
LIBVER = ("v108", "v108")
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


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


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """The resolved path, and ``(device, inode)`` when the file exists."""
    try:
        stat = os.stat(path)
        inode = (stat.st_dev, stat.st_ino)
    except OSError:
        inode = None
    return os.path.realpath(path), inode


def refuse_same_files(inputs: dict, outputs: dict, *, linked_by_design: tuple = ()) -> None:
    """Raise a one-line :class:`InputError` when an output is an input or another output.

    Parameters
    ----------
    inputs, outputs : dict
        ``{label: path}``; labels name the argument (``"DATA"``, ``"--out"``, ``"--out (PGD_OUT)"``);
        None paths are skipped. Files are the same when their resolved paths are equal or, for files that
        exist, their device and inode are (a hard link or a bind mount).
    linked_by_design : tuple of (label, label)
        Pairs of outputs compared by path only: files that pgd itself hard-links for a moment (a checkpoint and
        its previous file while a checkpoint is rotated, by a running or a killed run).
    """
    by_path_only = {frozenset(pair) for pair in linked_by_design}
    known = [(label, path, _identity(path)) for label, path in inputs.items() if path]
    for label, path in outputs.items():
        if not path:
            continue
        resolved, inode = _identity(path)
        for other_label, other_path, (other_resolved, other_inode) in known:
            same_inode = inode is not None and inode == other_inode
            if frozenset((label, other_label)) in by_path_only:
                same_inode = False
            if resolved != other_resolved and not same_inode:
                continue
            if other_label in inputs:
                raise InputError(f"{label} {path} is the same file as {other_label} {other_path}: pgd never "
                                 "writes over its inputs; choose another path")
            raise InputError(f"{other_label} and {label} are the same file ({path}): each output needs a "
                             "path of its own")
        known.append((label, path, (resolved, inode)))


def write_failure(error: BaseException) -> str | None:
    """The operating system's reason when ``error`` is a failed write (disk full, quota, I/O), else None."""
    if not isinstance(error, OSError):
        return None
    code = error.errno
    if code is None:  # HDF5 reports the system error inside its message
        match = _HDF5_ERRNO.search(str(error))
        code = int(match.group(1)) if match else None
    if code in (None, errno.EEXIST, errno.ENOENT):
        return None
    return os.strerror(code).lower()


class PendingFile:
    """A temporary file next to ``path`` that becomes ``path`` on :meth:`commit`.

    ``file`` is an open binary file object and ``path`` a name that reopens the same file (for writers that
    need a name: ``open``, ``savefig``); with ``O_TMPFILE`` that name is ``/proc/self/fd/N`` and nothing
    appears in the directory before :meth:`commit`.
    """

    def __init__(self, path: str):
        self.target = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.named = None
        try:
            self.fd = self._unnamed()
        except OSError:  # no O_TMPFILE here (not Linux, NFS, old kernel): a hidden named file
            try:
                self.fd, self.named = tempfile.mkstemp(dir=self.directory, prefix=f".{os.path.basename(path)}.",
                                                       suffix=".tmp")
            except OSError as error:
                raise InputError(f"cannot write {path}: {error.strerror or error}") from None
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(self.fd, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        self.path = self.named or f"/proc/self/fd/{self.fd}"
        self.file = os.fdopen(self.fd, "w+b", closefd=False)

    def _unnamed(self) -> int:
        if not hasattr(os, "O_TMPFILE"):
            raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE")
        return os.open(self.directory, os.O_TMPFILE | os.O_RDWR, 0o666)  # the umask applies

    def sync(self) -> None:
        """Flush the written bytes to stable storage."""
        self.file.flush()
        os.fsync(self.fd)

    def commit(self) -> None:
        """Give the file its name: link the unnamed file (or take the named one) and rename it onto the target."""
        staged = self.named
        if staged is None:
            staged = os.path.join(self.directory, f".{os.path.basename(self.target)}.{os.getpid()}.{self.fd}.tmp")
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.link(self.path, os.path.basename(staged), dst_dir_fd=dir_fd, follow_symlinks=True)
            finally:
                os.close(dir_fd)
        os.replace(staged, self.target)
        self.named = None
        self.close()
        try:  # make the rename itself durable
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def close(self) -> None:
        """Close the file; a named temporary file that was not committed is removed."""
        if self.fd is None:
            return
        try:
            self.file.close()
        except OSError:  # buffered bytes that cannot be written (disk full): the file is discarded anyway
            pass
        os.close(self.fd)
        self.fd = None
        if self.named and os.path.exists(self.named):
            os.unlink(self.named)


def _failed_write(error: BaseException, path: str, what: str) -> InputError | None:
    reason = write_failure(error)
    if reason is None:
        return None
    kept = "the previous file is unchanged" if os.path.exists(path) else "nothing was written"
    return InputError(f"cannot write {what} {path}: {reason} ({kept})")


@contextmanager
def pending_output(path: str, what: str = "output"):
    """Yield a :class:`PendingFile` for ``path``; on success it is fsynced and renamed onto ``path``.

    On an exception nothing of the new file remains and ``path`` is left as it was; a failed write is
    reported as one :class:`InputError` line.
    """
    pending = PendingFile(path)
    try:
        yield pending
        pending.sync()
        pending.commit()
    except BaseException as error:
        pending.close()
        failure = _failed_write(error, path, what)
        if failure is not None:
            raise failure from None
        raise


@contextmanager
def atomic_path(path: str, what: str = "output"):
    """Yield a path to write that appears at ``path`` only if the block succeeds (see :func:`pending_output`)."""
    with pending_output(path, what) as pending:
        yield pending.path


@contextmanager
def atomic_h5_file(path: str, what: str = "output"):
    """Yield a new HDF5 file (HDF5 >= 1.8 format) that appears at ``path`` only if the block succeeds."""
    check_writable(path, what)
    with pending_output(path, what) as pending, h5py.File(pending.file, "w", libver=LIBVER) as handle:
        yield handle
