"""The suite's layout: tests/unit (no mpirun), tests/spmd (numbers under mpirun), tests/cli (the commands end to
end), tests/gpu (a real device); tests/support holds the helpers (the one mpirun helper is
:func:`support.mpi.mpirun_command`). Every test is marked with its folder, so ``-m unit`` etc. select by cost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The PyPI Open MPI spends about 1 s of every MPI_Init (mpirun and singletons) probing the libfabric
# transport; the tests run on one machine, so leave it out (never do this on a cluster's fabric).
os.environ.setdefault("OMPI_MCA_btl", "^ofi")

TESTS = Path(__file__).resolve().parent
FOLDERS = ("unit", "spmd", "cli", "gpu")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its folder (``unit``, ``spmd``, ``cli``, ``gpu``)."""
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(TESTS).parts
        if parts and parts[0] in FOLDERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
