"""Is the MPI library CUDA-aware? Vendor probes (pure functions) and the start-up decision.

Passing a device buffer to an MPI that is not CUDA-aware crashes the process (a segmentation fault with
Open MPI 4.1.6), so ``--cuda-aware auto`` says yes only when a vendor probe does, and then confirms it with
a checksum Allreduce on device buffers; everything else stages through pinned host buffers.

Probes (:func:`probe`):

- Open MPI: ``ompi_info --parsable --all`` reports ``mpi_built_with_cuda_support:value:true|false``; the
  plain ``ompi_info`` lists ``MPI extensions: ..., cuda, ...`` when the CUDA extension is built.
- MPICH and Cray MPICH: GPU support is on only with ``MPICH_GPU_SUPPORT_ENABLED=1`` in the environment.
- MVAPICH2(-GDR): ``MV2_USE_CUDA=1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np

from pgd.device.backend import select_backend
from pgd.device.ops import CupyOps

CUDA_AWARE_MODES = ("auto", "on", "off")
AWARE, STAGING, NO_GPU = "cuda-aware", "host staging", "no GPU"

_TRUE = {"1", "true", "yes", "on", "enabled"}


def mpi_vendor(library: str) -> str:
    """Vendor of an ``MPI_Get_library_version`` string: open-mpi, mvapich, cray-mpich, intel, mpich or
    unknown."""
    text = library.lower()
    for needle, vendor in (("open mpi", "open-mpi"), ("mvapich", "mvapich"), ("cray", "cray-mpich"),
                           ("intel", "intel"), ("mpich", "mpich")):
        if needle in text:
            return vendor
    return "unknown"


def probe_ompi_info(text: str) -> bool | None:
    """CUDA support according to ``ompi_info`` output (parsable or plain); None when it does not say."""
    match = re.search(r"mpi_built_with_cuda_support:value:(\w+)", text)
    if match:
        return match.group(1).lower() == "true"
    match = re.search(r"^\s*MPI extensions:\s*(.*)$", text, re.MULTILINE)
    if match:
        return "cuda" in [item.strip().lower() for item in match.group(1).split(",")]
    return None


def probe(library: str, ompi_info_text: str, environ) -> tuple[bool | None, str]:
    """What the vendor probes say: ``(True/False/None, reason)``.

    Parameters
    ----------
    library : str
        ``MPI.Get_library_version()``.
    ompi_info_text : str
        Output of ``ompi_info --parsable --all`` (or plain ``ompi_info``); empty when not run.
    environ : mapping
        The environment (MPICH/Cray/MVAPICH switches).
    """
    vendor = mpi_vendor(library)
    if vendor == "open-mpi":
        said = probe_ompi_info(ompi_info_text)
        if said is None:
            return None, "Open MPI, but ompi_info did not report CUDA support (not found or no answer)"
        return said, f"Open MPI ompi_info: built {'with' if said else 'without'} CUDA support"
    if vendor in ("mpich", "cray-mpich"):
        value = environ.get("MPICH_GPU_SUPPORT_ENABLED")
        on = str(value).strip().lower() in _TRUE
        return on, f"{vendor}: MPICH_GPU_SUPPORT_ENABLED={value if value is not None else '(unset)'}"
    if vendor == "mvapich":
        value = environ.get("MV2_USE_CUDA")
        on = str(value).strip().lower() in _TRUE
        return on, f"MVAPICH: MV2_USE_CUDA={value if value is not None else '(unset)'}"
    return None, f"no CUDA-awareness probe for this MPI ({vendor})"


def decide(mode: str, *, is_gpu: bool, library: str, ompi_info_text: str, environ) -> tuple[str, str]:
    """The decision before confirmation: ``(AWARE|STAGING|NO_GPU, reason)``.

    ``AWARE`` still has to pass :func:`confirm_device_allreduce` on a GPU run.
    """
    if mode not in CUDA_AWARE_MODES:
        raise ValueError(f"unknown --cuda-aware {mode!r}")
    if not is_gpu:
        return NO_GPU, "data on the host" + (f" (--cuda-aware {mode} has no effect)" if mode != "auto" else "")
    if mode == "off":
        return STAGING, "--cuda-aware off"
    if mode == "on":
        return AWARE, "--cuda-aware on"
    said, reason = probe(library, ompi_info_text, environ)
    if said:
        return AWARE, reason
    return STAGING, reason + ("" if said is False else "; staging to be safe")


def run_ompi_info(timeout: float = 20.0) -> str:
    """Output of ``ompi_info --parsable --all``, or "" when it is missing or fails."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    executable = shutil.which("ompi_info", path=path)  # a pip-installed Open MPI sits next to python
    if executable is None:
        return ""
    try:
        return subprocess.run([executable, "--parsable", "--all"], capture_output=True, text=True,
                              timeout=timeout, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def checksum_expected(size: int, length: int = 16) -> np.ndarray:
    """The sum over ranks of :func:`checksum_contribution` (for the confirmation Allreduce)."""
    return np.arange(1, length + 1, dtype=np.float64) * (size * (size + 1) / 2)


def checksum_contribution(rank: int, length: int = 16) -> np.ndarray:
    """Rank ``rank``'s buffer in the confirmation Allreduce: ``(rank + 1) * [1, 2, ..., length]``."""
    return np.arange(1, length + 1, dtype=np.float64) * (rank + 1)


def confirm_device_allreduce(mpi_comm, ops) -> bool:
    """Allreduce a device buffer and check the sums on every rank (collective); True when all match.

    ``ops`` is a :class:`pgd.device.ops.DeviceOps`. Only called when a probe (or ``--cuda-aware on``) says
    the library is CUDA-aware.
    """
    from mpi4py import MPI  # noqa: PLC0415 - MPI only where a probe needs it (vendor parsing runs without)

    rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
    buf = ops.from_host(checksum_contribution(rank))
    ops.synchronize()
    mpi_comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    good = int(np.array_equal(ops.to_host_copy(buf), checksum_expected(size)))
    return bool(mpi_comm.allreduce(good, op=MPI.MIN))


def resolve(mpi_comm, mode: str, *, is_gpu: bool, ops=None, environ=None) -> tuple[str, str]:
    """The run's decision (collective): probes on rank 0, broadcast, then the device checksum if AWARE."""
    from mpi4py import MPI  # noqa: PLC0415 - MPI only where a probe needs it (vendor parsing runs without)

    answer = None
    if mpi_comm.Get_rank() == 0:
        library = MPI.Get_library_version().replace("\x00", "")
        needs_ompi_info = is_gpu and mode == "auto" and mpi_vendor(library) == "open-mpi"
        answer = decide(mode, is_gpu=is_gpu, library=library,
                        ompi_info_text=run_ompi_info() if needs_ompi_info else "",
                        environ=os.environ if environ is None else environ)
    decision, reason = mpi_comm.bcast(answer, root=0)
    if decision == AWARE and not confirm_device_allreduce(mpi_comm, ops):
        return STAGING, reason + "; but the checksum Allreduce on device buffers was wrong"
    if decision == AWARE:
        reason += "; confirmed by a checksum Allreduce on device buffers"
    return decision, reason


def describe(decision: str, reason: str) -> str:
    """One line for summaries and model files: ``decision (reason)``."""
    return f"{decision} ({reason})"


def probe_line() -> str:
    """What the vendor probes say about this MPI (``pgd info``'s ``mpi_cuda_probe``)."""
    from mpi4py import MPI  # noqa: PLC0415 - MPI only where a probe needs it (vendor parsing runs without)

    library = MPI.Get_library_version().replace("\x00", "")
    said, reason = probe(library, run_ompi_info() if mpi_vendor(library) == "open-mpi" else "", os.environ)
    return f"{'CUDA-aware' if said else 'not CUDA-aware' if said is False else 'unknown'} ({reason})"


def cuda_aware_line(world, mode: str, gpus: int) -> str:
    """``pgd info``'s line (collective): ``no GPU``, or the decision a GPU run takes on this rank's GPU."""

    if gpus == 0:
        return NO_GPU
    from pgd.runtime.topology import node_local_rank  # noqa: PLC0415 - imports MPI

    backend = select_backend("gpu", node_local_rank(world)[0])
    return describe(*resolve(world, mode, is_gpu=True, ops=CupyOps(backend.xp)))
