"""``pgd info``: versions, the MPI library, the job's layout, GPUs and the CUDA-aware decision."""

from __future__ import annotations

import os
import platform
import socket
import sys

import click
import h5py
import mpi4py
import numpy as np
from mpi4py import MPI

import pgd
from pgd.comm.cuda_aware import cuda_aware_line, probe_line
from pgd.device.backend import gpu_count
from pgd.runtime import launcher
from pgd.runtime.topology import mpi_library, node_layout


def gather_info(world, cuda_aware_mode: str | None = None) -> dict:
    """Facts about this installation and this job (collective: every rank must call it).

    ``cuda_aware_mode`` defaults to ``PGD_CUDA_AWARE`` (else ``auto``), as ``pgd train`` would resolve it.
    """
    cuda_aware_mode = cuda_aware_mode or os.environ.get("PGD_CUDA_AWARE", "auto")
    ranks_per_node, nodes = node_layout(world)
    gpus = gpu_count()
    return {
        "pgd": pgd.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "mpi4py": mpi4py.__version__,
        "click": click.__version__ if hasattr(click, "__version__") else "unknown",
        "mpi_library": mpi_library(),
        "mpi_standard": "{}.{}".format(*MPI.Get_version()),
        "world_size": world.Get_size(),
        "nodes": nodes,
        "ranks_per_node": ranks_per_node,
        "host": socket.gethostname(),
        "blas_threads": launcher.BLAS_THREADS_RESOLVED or "unknown",
        "gpus": gpus,
        "cuda_aware": cuda_aware_line(world, cuda_aware_mode, gpus),
        "mpi_cuda_probe": probe_line() if world.Get_rank() == 0 else "",
        "executable": sys.executable,
    }


def format_fields(fields: dict) -> str:
    """Aligned ``key  value`` lines (floats with 6 significant digits)."""
    width = max(len(key) for key in fields)
    return "\n".join(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}"
                     for key, value in fields.items())
