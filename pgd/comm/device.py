"""Communicators for device buffers: host staging, CUDA-aware MPI, and NCCL.

- :class:`StagedCommunicator` copies a device buffer to a pinned host buffer (allocated once per buffer
  shape), synchronises the stream, runs the host communicator, and copies the result back.
- :class:`DeviceCommunicator` hands device buffers straight to a CUDA-aware MPI, after synchronising.
- :class:`NcclCommunicator` sums with ``cupy.cuda.nccl``; the unique id is broadcast over MPI; one rank
  per GPU.

:func:`make_device_communicator` picks one from ``--comm``, ``--cuda-aware`` and the backend, and records
the CUDA-aware decision as ``comm.cuda_aware`` (shown in the run summary and the model file).
"""

from __future__ import annotations

import socket

from mpi4py import MPI

from pgd.comm import cuda_aware
from pgd.comm.host import Communicator, make_communicator
from pgd.device.ops import CupyOps
from pgd.errors import PgdError


class StagedCommunicator(Communicator):
    """A host communicator used on device buffers through pinned host copies.

    Parameters
    ----------
    inner : pgd.comm.host.Communicator
        Does the MPI work on host buffers.
    ops : pgd.device.ops.DeviceOps
        Copies and synchronisation.
    """

    def __init__(self, inner, ops):
        self.inner, self.ops = inner, ops
        self.name = inner.name
        self._host = {}
        super().__init__(inner.mpi_comm)

    def host_buffer(self, buf):
        """The pinned host buffer for ``buf``'s shape and dtype (allocated on first use, then reused)."""
        key = (tuple(buf.shape), str(buf.dtype))
        if key not in self._host:
            self._host[key] = self.ops.pinned_empty(buf.shape, buf.dtype)
        return self._host[key]

    def _staged(self, buf, call, copy_back: bool = True) -> None:
        started = MPI.Wtime()
        if self.size == 1:   # nothing to combine: no copies, no synchronisation
            self._count(buf, started)
            return
        host = self.host_buffer(buf)
        self.ops.copy_to_host(buf, host)
        self.ops.synchronize()
        call(host)
        if copy_back:
            self.ops.copy_to_device(host, buf)
        self._count(buf, started)

    def allreduce(self, buf) -> None:
        self._staged(buf, self.inner.allreduce)

    def reduce(self, buf, root: int = 0) -> None:
        self._staged(buf, lambda host: self.inner.reduce(host, root), copy_back=self.rank == root)

    def bcast(self, buf, root: int = 0) -> None:
        self._staged(buf, lambda host: self.inner.bcast(host, root))


class DeviceCommunicator(Communicator):
    """A host communicator given device buffers directly (CUDA-aware MPI); synchronises before each call."""

    def __init__(self, inner, ops):
        self.inner, self.ops = inner, ops
        self.name = inner.name
        super().__init__(inner.mpi_comm)

    def _direct(self, buf, call) -> None:
        started = MPI.Wtime()
        self.ops.synchronize()
        call(buf)
        self._count(buf, started)

    def allreduce(self, buf) -> None:
        self._direct(buf, self.inner.allreduce)

    def reduce(self, buf, root: int = 0) -> None:
        self._direct(buf, lambda b: self.inner.reduce(b, root))

    def bcast(self, buf, root: int = 0) -> None:
        self._direct(buf, lambda b: self.inner.bcast(b, root))


def shared_gpu_message(entries) -> str | None:
    """None when every rank has its own GPU, else a one-line error naming two ranks that share one.

    ``entries[rank] = (host, gpu_id)``, gathered over the communicator.
    """
    seen = {}
    for rank, entry in enumerate(entries):
        if tuple(entry) in seen:
            host, gpu = entry
            return (f"--comm nccl needs one GPU per rank, but ranks {seen[tuple(entry)]} and {rank} share GPU "
                    f"{gpu} on {host}; start at most one rank per GPU or use --comm allreduce")
        seen[tuple(entry)] = rank
    return None


class NcclCommunicator(Communicator):
    """Sums device buffers with NCCL (``cupy.cuda.nccl``), bootstrapped over MPI.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        The ranks (one GPU each).
    cupy : module
        CuPy.
    gpu_uuid : str
        An identifier of this rank's GPU (PCI bus id), to refuse two ranks on one GPU.
    """

    name = "nccl"

    def __init__(self, mpi_comm, cupy, gpu_uuid: str):
        super().__init__(mpi_comm)
        self.cupy = cupy
        try:
            from cupy.cuda import nccl  # noqa: PLC0415 - lazy, GPU only
        except ImportError as error:
            raise PgdError(f"--comm nccl needs NCCL through CuPy, but cupy.cuda.nccl cannot be imported ({error}); "
                           f"use --comm allreduce", collective=True) from None
        self._nccl = nccl
        entries = mpi_comm.allgather((socket.gethostname(), gpu_uuid))
        message = shared_gpu_message(entries)
        if message:
            raise PgdError(message, collective=True)
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = mpi_comm.bcast(unique_id, root=0)
        self._comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def _args(self, buf):
        stream = self.cupy.cuda.get_current_stream().ptr
        return buf.data.ptr, buf.size, self._types[str(buf.dtype)], stream

    def _finish(self, buf, started: float) -> None:
        self.cupy.cuda.get_current_stream().synchronize()
        self._count(buf, started)

    def allreduce(self, buf) -> None:
        started = MPI.Wtime()
        ptr, count, dtype, stream = self._args(buf)
        self._comm.allReduce(ptr, ptr, count, dtype, self._nccl.NCCL_SUM, stream)
        self._finish(buf, started)

    def reduce(self, buf, root: int = 0) -> None:
        started = MPI.Wtime()
        ptr, count, dtype, stream = self._args(buf)
        self._comm.reduce(ptr, ptr, count, dtype, self._nccl.NCCL_SUM, root, stream)
        self._finish(buf, started)

    def bcast(self, buf, root: int = 0) -> None:
        started = MPI.Wtime()
        ptr, count, dtype, stream = self._args(buf)
        self._comm.bcast(ptr, count, dtype, root, stream)
        self._finish(buf, started)


def make_device_communicator(name: str, world, backend, cuda_aware_mode: str = "auto", ops=None):
    """The communicator for ``--comm name`` on ``backend``, with ``comm.cuda_aware`` describing the choice.

    On the host this is :func:`pgd.comm.host.make_communicator` unchanged (plus the ``no GPU`` note).
    """
    if not backend.is_gpu:
        if name == "nccl":
            raise PgdError("--comm nccl needs the GPU (--device gpu); use --comm allreduce on the CPU",
                           collective=True)
        comm = make_communicator(name, world)
        comm.cuda_aware = cuda_aware.describe(*cuda_aware.decide(
            cuda_aware_mode, is_gpu=False, library="", ompi_info_text="", environ={}))
        return comm
    if ops is None:

        ops = CupyOps(backend.xp)
    if name == "nccl":
        bus_id = backend.xp.cuda.Device(backend.device_id).pci_bus_id
        comm = NcclCommunicator(world, backend.xp, bus_id)  # every rank sees the same sharing check
        comm.cuda_aware = "nccl (device buffers through NCCL; MPI only for the bootstrap)"
        return comm
    decision, reason = cuda_aware.resolve(world, cuda_aware_mode, is_gpu=True, ops=ops)
    inner = make_communicator(name, world)
    comm = DeviceCommunicator(inner, ops) if decision == cuda_aware.AWARE else StagedCommunicator(inner, ops)
    comm.cuda_aware = cuda_aware.describe(decision, reason)
    return comm
