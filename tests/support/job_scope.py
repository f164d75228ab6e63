"""What the scripts that run several jobs in one MPI process share (``mpi_cases.py``, ``spmd_server.py``):
environment variables set for one job and undone after it, and the exit code a ``SystemExit`` stands for."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def scoped_environment(changes: dict):
    """Within: the variables of ``changes`` set (values as strings); afterwards each is as it was, or unset."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update({name: str(value) for name, value in changes.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def exit_code(stop: SystemExit) -> int:
    """The process exit status of ``stop``: its code, 0 for none, 1 for a message."""
    return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
