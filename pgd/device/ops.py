"""The few device operations the GPU path needs, behind a small interface.

:class:`CupyOps` implements them with CuPy (pinned host memory, asynchronous copies on the current
stream). The staging communicator and the blocked loader are written against this interface only, so the
tests drive them on the CPU with a fake device that wraps NumPy and counts copies and synchronisations.
"""

from __future__ import annotations

import numpy as np


class DeviceOps:
    """Interface: allocation, pinned host buffers, copies on the stream, synchronisation, free memory."""

    def empty(self, shape, dtype):
        """An uninitialised device array."""
        raise NotImplementedError

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        """A host array in page-locked memory (fast, asynchronous copies)."""
        raise NotImplementedError

    def copy_to_host(self, device_array, host_array) -> None:
        """Queue ``host_array[...] = device_array`` on the stream (asynchronous)."""
        raise NotImplementedError

    def copy_to_device(self, host_array, device_array) -> None:
        """Queue ``device_array[...] = host_array`` on the stream (asynchronous)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until everything queued on the stream is done."""
        raise NotImplementedError

    def free_bytes(self) -> int:
        """Free device memory in bytes (including what the array pool holds but does not use)."""
        raise NotImplementedError

    def from_host(self, host_array):
        """A new device array holding ``host_array`` (synchronous)."""
        out = self.empty(host_array.shape, host_array.dtype)
        self.copy_to_device(np.ascontiguousarray(host_array), out)
        self.synchronize()
        return out

    def to_host_copy(self, device_array) -> np.ndarray:
        """A new host array holding ``device_array`` (synchronous)."""
        out = np.empty(device_array.shape, dtype=device_array.dtype)
        self.copy_to_host(device_array, out)
        self.synchronize()
        return out


class CupyOps(DeviceOps):
    """:class:`DeviceOps` with CuPy on the current device and stream."""

    def __init__(self, cupy):
        self.cupy = cupy

    def empty(self, shape, dtype):
        return self.cupy.empty(shape, dtype=dtype)

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        memory = self.cupy.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
        return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)

    def copy_to_host(self, device_array, host_array) -> None:
        device_array.get(out=host_array, stream=self.cupy.cuda.get_current_stream(), blocking=False)

    def copy_to_device(self, host_array, device_array) -> None:
        device_array.set(host_array, stream=self.cupy.cuda.get_current_stream())

    def synchronize(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def free_bytes(self) -> int:
        free, _total = self.cupy.cuda.runtime.memGetInfo()
        pool = self.cupy.get_default_memory_pool()
        return int(free + pool.total_bytes() - pool.used_bytes())
