"""The one reader of pgd's internal ``PGD_*`` environment variables (never user options; those are in
:mod:`pgd.config`).

- ``PGD_BLAS_THREADS``: BLAS/OpenMP threads per rank (see :func:`pgd.runtime.launcher.configure_blas_threads`).
- ``PGD_CPU_KERNEL``: the host gradient path, ``auto`` (default: the compiled one-pass kernel where it pays),
  ``fused`` (the compiled kernel whenever it can run) or ``blocked`` (the blocked BLAS path only).
- ``PGD_DEBUG``: print the traceback of an internal error.
- ``PGD_CHECK_REPLICAS``: tests: a bitwise check after every step that all ranks hold the same parameters.
- ``PGD_GPU_RESERVE_BYTES``: device memory kept free for the CUDA context, kernels and small buffers.
- ``PGD_SHM_NODE_RANKS``: ``--mode shm`` splits the ranks into simulated nodes of this many ranks.
- ``PGD_TEST_SLEEP_PER_ITER``, ``PGD_TEST_CLOCK_SKEW``: test-only fault injection (:mod:`pgd.runtime.faults`).

Conventions
-----------
Each function reads its variable when called (tests change them between in-process runs); callers read a
setting once per run, never on the hot path. Values are never passed between pgd's modules through
``os.environ``.
"""

from __future__ import annotations

import os


def blas_threads(environ=os.environ) -> int | None:
    """``PGD_BLAS_THREADS`` as an int, or None when unset or not a number."""
    value = environ.get("PGD_BLAS_THREADS", "").strip()
    return int(value) if value.isdigit() else None


CPU_KERNEL_CHOICES = ("auto", "fused", "blocked")


def cpu_kernel(environ=os.environ) -> str:
    """``PGD_CPU_KERNEL`` (``auto`` when unset; an unknown value is an error naming the choices)."""
    value = environ.get("PGD_CPU_KERNEL", "").strip().lower() or "auto"
    if value not in CPU_KERNEL_CHOICES:
        raise ValueError(f"PGD_CPU_KERNEL={value!r}: choose from {', '.join(CPU_KERNEL_CHOICES)}")
    return value


def debug_traceback(environ=os.environ) -> bool:
    """``PGD_DEBUG``: show the traceback of an internal error."""
    return bool(environ.get("PGD_DEBUG"))


def check_replicas(environ=os.environ) -> bool:
    """``PGD_CHECK_REPLICAS``: check after every step that the ranks' parameters agree bit for bit."""
    return bool(environ.get("PGD_CHECK_REPLICAS"))


def gpu_reserve_bytes(default: int, environ=os.environ) -> int:
    """``PGD_GPU_RESERVE_BYTES``, else ``default``."""
    return int(environ.get("PGD_GPU_RESERVE_BYTES", default))


def shm_node_ranks(environ=os.environ) -> int:
    """``PGD_SHM_NODE_RANKS``: ranks per simulated node (0: the real nodes)."""
    return int(environ.get("PGD_SHM_NODE_RANKS", "0") or 0)


def test_sleep_per_iter(environ=os.environ) -> str:
    """``PGD_TEST_SLEEP_PER_ITER`` as written (``S`` or ``R:S``), empty when unset."""
    return environ.get("PGD_TEST_SLEEP_PER_ITER", "")


def test_clock_skew(environ=os.environ) -> str:
    """``PGD_TEST_CLOCK_SKEW`` as written (``R:S``), empty when unset."""
    return environ.get("PGD_TEST_CLOCK_SKEW", "")
