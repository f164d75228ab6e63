"""An exclusive lock on a path for the life of a run (``--checkpoint``): two runs never share checkpoints.

The lock is ``PATH.lock``, held with ``flock`` by rank 0 from before the data loads until the run ends; it
holds one line saying who holds it (host, pid, start time). The kernel releases an ``flock`` when its
process dies, so a lock file left by a killed run is stale by construction and simply taken over. Where
the file system has no ``flock`` (some NFS set-ups), the file is created exclusively instead, and a lock
left by a process that no longer runs on this host is recognised as stale and replaced.

Conventions
-----------
:class:`RunLock` raises :class:`pgd.errors.InputError` (one line: who holds it, what to do) when the path is
in use; the caller agrees on the error over the ranks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from pgd.errors import InputError

LOCK_SUFFIX = ".lock"


def lock_path(path: str) -> str:
    """The lock file of ``path``."""
    return path + LOCK_SUFFIX


def _holder() -> str:
    return f"{socket.gethostname()} {os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}"


def _describe(text: str) -> str:
    parts = text.split()
    if len(parts) >= 3:
        return f"pid {parts[1]} on {parts[0]}, since {parts[2]}"
    return "another process"


def _running_here(text: str) -> bool | None:
    """True/False when the holder ran on this host and is/is not alive; None when it is elsewhere."""
    parts = text.split()
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Hold ``PATH.lock`` exclusively; ``what`` names the option in messages (``--checkpoint``)."""

    def __init__(self, path: str, what: str = "--checkpoint"):
        self.path, self.what = path, what
        self.lock = lock_path(path)
        self.fd = None
        self.exclusive_file = False

    def _refuse(self, text: str, stale_hint: bool = False) -> None:
        hint = f"; if no run uses it, delete {self.lock}" if stale_hint else ""
        raise InputError(f"{self.what} {self.path} is in use by another run ({_describe(text)}): wait for it to "
                         f"end or choose another {self.what} path{hint}")

    def acquire(self) -> None:
        """Take the lock or raise :class:`InputError`."""
        for _ in range(5):  # the lock file may be replaced between open and flock: try again
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 200, 0).decode("utf-8", "replace")
                os.close(fd)
                self._refuse(text)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self._acquire_exclusive_file()
                    return
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:  # who holds it, for the message of a refused run; the lock holds without it
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, _holder().encode(), 0)
                except OSError:
                    pass
                self.fd = fd
                return
            os.close(fd)
        raise InputError(f"cannot lock {self.lock}: it keeps being replaced by another process")

    def _acquire_exclusive_file(self) -> None:
        """No ``flock``: create the lock file exclusively; replace it when its process is gone."""
        for _ in range(5):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.lock, encoding="utf-8") as handle:
                        text = handle.read(200)
                except FileNotFoundError:
                    continue
                alive = _running_here(text)
                if alive is False:  # stale: its process ended without removing it
                    try:
                        os.unlink(self.lock)
                    except FileNotFoundError:
                        pass
                    continue
                self._refuse(text, stale_hint=alive is None)
            try:
                os.write(fd, _holder().encode())
            except OSError:
                pass
            self.fd, self.exclusive_file = fd, True
            return
        raise InputError(f"cannot lock {self.lock}: it keeps being replaced by another process")

    def release(self) -> None:
        """Remove the lock file and let go of it."""
        if self.fd is None:
            return
        try:
            os.unlink(self.lock)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
