"""A fake ``cupy`` package: put ``tests/fake_cupy`` on ``PYTHONPATH`` and ``pgd train --device gpu`` runs its
whole GPU path (backend, pinned loader, staging, fused and finishing kernels) on NumPy, with every kernel
launch checked and run by its NumPy model (see ``tests/gpu_fakes.py``). Tests only: it cannot do NCCL."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))).rsplit(os.sep, 1)[0])
from gpu_fakes import FakeCupy  # noqa: E402

_FAKE = FakeCupy()


def __getattr__(name):
    return getattr(_FAKE, name)
