"""A fake device for the GPU path's host-side logic: NumPy arrays that count copies and synchronisations."""

from __future__ import annotations

import numpy as np

from pgd.device.ops import DeviceOps


class DeviceArray(np.ndarray):
    """A NumPy array standing for device memory (so tests can tell it from host buffers)."""


class FakeOps(DeviceOps):
    """:class:`pgd.device.ops.DeviceOps` on NumPy; ``pending`` counts queued copies not yet synchronised."""

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


class FakeCupyArray(np.ndarray):
    """A NumPy array posing as a CuPy array: ``.data.ptr``, ``get`` and ``set`` like CuPy's."""

    @property
    def data(self):
        return _Pointer(self.ctypes.data)

    def get(self, out=None, stream=None, blocking=True):
        out[...] = self.view(np.ndarray)
        return out

    def set(self, host, stream=None):
        self.view(np.ndarray)[...] = host


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class FakeKernel:
    """A compiled kernel of :mod:`pgd.device.kernels` run by its NumPy model.

    Checks what CuPy would pass to CUDA: the argument count and the exact NumPy scalar types of the C
    signature, and that the grid matches the launch plan the name encodes; then runs ``simulate_fused``
    or ``simulate_finish``.
    """

    num_regs = 64

    def __init__(self, name: str, launches: list):
        self.name, self.launches = name, launches

    def __call__(self, grid, block, args, shared_mem=0):
        from pgd.device.kernels import LaunchPlan, simulate_finish, simulate_fused

        self.launches.append(self.name)
        if self.name == "pgd_finish":
            sums, params, grad, stats, d, count, l2 = args
            assert (type(d), type(count), type(l2)) == (np.int64, np.float64, np.float64)
            assert grid == (1,) and grad.shape == (int(d) + 1,) and isinstance(stats, FakeCupyArray)
            stats[...] = simulate_finish(sums, params, grad, float(count), float(l2))
            return
        X, y, params, n, d, fit_intercept, out = args
        assert (type(n), type(d), type(fit_intercept)) == (np.int64, np.int64, np.int32)
        assert X.shape == (int(n), int(d)) and params.dtype == np.float64 and params.shape == (int(d) + 1,)
        _, _, ctype, loss, path, shape = self.name.split("_")
        assert X.dtype == {"float": np.float32, "double": np.float64}[ctype]
        vectorised = path == "vec"
        lanes, chunks, unroll = (int(v) for v in shape.split("x")) if vectorised else (32, int(shape), 1)
        plan = LaunchPlan(vectorised, 16 // X.itemsize if vectorised else 1, lanes, chunks, unroll, grid[1],
                          grid[0], block[0], shared_mem)
        assert shared_mem == 8 * (int(d) if vectorised else 32 * chunks)
        w = params[: int(d)].astype(X.dtype)
        offset = float(X.dtype.type(params[int(d)])) if fit_intercept else 0.0
        out += simulate_fused(X, y, w, offset, loss, bool(fit_intercept), plan)


class FakeCupy:
    """Just enough of the ``cupy`` module for the GPU path's host code, on NumPy.

    Array constructors return :class:`FakeCupyArray`; ``RawModule`` returns :class:`FakeKernel` objects;
    ``launches`` lists every kernel launched, ``memsets`` counts asynchronous memsets.
    """

    __name__ = "cupy"

    def __init__(self, compile_error: str | None = None):
        self.launches, self.memsets, self.modules = [], 0, 0
        fake = self

        class RawModule:
            def __init__(self, code, options=()):
                fake.modules += 1
                self.code = code
                if compile_error and "pgd_fused" in code:
                    raise RuntimeError(compile_error)

            def get_function(self, name):
                assert name in self.code
                return FakeKernel(name, fake.launches)

        def memset_async(ptr, value, size, stream):
            import ctypes

            fake.memsets += 1
            ctypes.memset(ptr, value, size)

        stream = type("Stream", (), {"ptr": 0, "synchronize": lambda self: None})()
        device = type("Device", (), {"id": 0, "attributes": {"MultiProcessorCount": 2},
                                     "use": lambda self: None, "pci_bus_id": "0000:01:00.0"})()
        runtime = type("Runtime", (), {
            "memsetAsync": staticmethod(memset_async), "getDeviceCount": staticmethod(lambda: 1),
            "getDeviceProperties": staticmethod(lambda device_id: {"name": b"Fake GPU (NumPy)"}),
            "memGetInfo": staticmethod(lambda: (8 << 30, 16 << 30))})()
        pool = type("Pool", (), {"total_bytes": lambda self: 0, "used_bytes": lambda self: 0})()
        self.get_default_memory_pool = lambda: pool
        self.RawModule = RawModule
        self.cuda = type("Cuda", (), {
            "Device": staticmethod(lambda *a: device), "runtime": runtime,
            "get_current_stream": staticmethod(lambda: stream),
            "alloc_pinned_memory": staticmethod(lambda nbytes: bytearray(nbytes))})()

    def __getattr__(self, name):
        value = getattr(np, name)
        if callable(value) and name in ("empty", "zeros", "full", "array", "asarray", "empty_like",
                                        "zeros_like", "concatenate"):
            return lambda *args, **kwargs: np.asarray(value(*args, **kwargs)).view(FakeCupyArray)
        return value

    @staticmethod
    def asnumpy(array):
        return np.asarray(array).view(np.ndarray)
