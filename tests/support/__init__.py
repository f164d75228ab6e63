"""Test support: helpers shared by the suite, the fake CuPy, and the scripts that tests run under mpirun."""

from __future__ import annotations

from pathlib import Path

#: This folder (the scripts run under mpirun live here) and the repository's root.
SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]


def script(name: str) -> str:
    """The path of a support script (``mpi_*_check.py``, ``mpi_cases.py``) to run under mpirun."""
    return str(SUPPORT / name)
