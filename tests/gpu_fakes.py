"""A fake device for the GPU path's host-side logic: NumPy arrays that count copies and synchronisations."""

from __future__ import annotations

import numpy as np

from pgd.device_ops import DeviceOps


class DeviceArray(np.ndarray):
    """A NumPy array standing for device memory (so tests can tell it from host buffers)."""


class FakeOps(DeviceOps):
    """:class:`pgd.device_ops.DeviceOps` on NumPy; ``pending`` counts queued copies not yet synchronised."""

    def __init__(self, free: int = 1 << 40):
        self.free = free
        self.pending = 0
        self.copies_to_host = self.copies_to_device = self.synchronizations = 0
        self.pinned = []

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype).view(DeviceArray)

    def pinned_empty(self, shape, dtype):
        buffer = np.empty(shape, dtype=dtype)
        self.pinned.append(buffer)
        return buffer

    def copy_to_host(self, device_array, host_array):
        assert isinstance(device_array, DeviceArray) and not isinstance(host_array, DeviceArray)
        host_array[...] = device_array.view(np.ndarray)
        self.copies_to_host += 1
        self.pending += 1

    def copy_to_device(self, host_array, device_array):
        assert isinstance(device_array, DeviceArray) and not isinstance(host_array, DeviceArray)
        device_array.view(np.ndarray)[...] = host_array
        self.copies_to_device += 1
        self.pending += 1

    def synchronize(self):
        self.synchronizations += 1
        self.pending = 0

    def free_bytes(self):
        return self.free


class FakeMPIComm:
    """An MPI communicator of ``size`` ranks whose other ranks hold the same buffer as this one.

    Every call checks that the fake device has nothing queued (the stream was synchronised) and, unless
    ``device_ok``, that the buffer is host memory.
    """

    def __init__(self, ops: FakeOps, size: int = 2, rank: int = 0, device_ok: bool = False):
        self.ops, self.size, self.rank, self.device_ok = ops, size, rank, device_ok
        self.calls = []

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def _check(self, name, buf):
        assert self.ops.pending == 0, f"{name} called before the stream was synchronised"
        assert self.device_ok or not isinstance(buf, DeviceArray), f"{name} got a device buffer"
        self.calls.append(name)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        self._check("Allreduce", recvbuf)
        recvbuf *= self.size

    def Reduce(self, sendbuf, recvbuf, op=None, root=0):
        buf = recvbuf if self.rank == root else sendbuf
        self._check("Reduce", buf)
        if self.rank == root:
            recvbuf *= self.size

    def Bcast(self, buf, root=0):
        self._check("Bcast", buf)

    def Barrier(self):
        self.calls.append("Barrier")
