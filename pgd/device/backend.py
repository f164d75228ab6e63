"""Array backend chosen once per run: NumPy on the host or CuPy on a GPU, exposed as ``xp``.

``import cupy`` happens only inside :func:`load_cupy`, so a CPU-only install never needs CuPy. The GPU
of a rank is chosen from its node-local rank (``Split_type(COMM_TYPE_SHARED)``) before anything is
allocated on it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import numpy as np

from pgd.errors import PgdError

DEVICES = ("auto", "cpu", "gpu")


def is_cupy(xp) -> bool:
    """True when the array namespace ``xp`` is CuPy (or the tests' fake CuPy, which takes its name): the one
    place that asks, for code handed an ``xp`` rather than a :class:`Backend`."""
    return getattr(xp, "__name__", "") == "cupy"


def host_copy_of(xp, array) -> np.ndarray:
    """``array`` of namespace ``xp`` as a NumPy array (a device-to-host copy on CuPy, a view on NumPy)."""
    return getattr(xp, "asnumpy", np.asarray)(array)


@dataclass
class Backend:
    """The array module of a run and the device it lives on.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy"``.
    xp : module
        ``numpy`` or ``cupy``.
    device : str
        ``"cpu"`` or ``"gpu"``.
    device_id : int or None
        CUDA device ordinal on this node.
    description : str
        Human-readable device name for summaries.
    """

    name: str
    xp: object
    device: str
    device_id: int | None = None
    description: str = field(default_factory=platform.processor)

    @property
    def is_gpu(self) -> bool:
        """True when arrays live in GPU memory."""
        return self.device == "gpu"

    def to_host(self, array) -> np.ndarray:
        """Copy (or view, on the host backend) ``array`` as a NumPy array."""
        return self.xp.asnumpy(array) if self.is_gpu else np.asarray(array)

    def to_device(self, array):
        """Move a host array to this backend's device (no copy on the host backend)."""
        return self.xp.asarray(array) if self.is_gpu else array

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the host)."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()


def load_cupy():
    """Import CuPy, or return None when it (or a usable CUDA driver) is missing."""
    try:
        import cupy  # noqa: PLC0415 - lazy by design

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return None


def gpu_count() -> int:
    """How many CUDA devices this process sees (0 without CuPy or a driver)."""
    cupy = load_cupy()
    return 0 if cupy is None else int(cupy.cuda.runtime.getDeviceCount())


def cpu_backend() -> Backend:
    """The NumPy backend."""
    return Backend(name="numpy", xp=np, device="cpu", description=platform.processor() or "cpu")


def select_backend(device: str, local_rank: int) -> Backend:
    """Choose the backend for ``--device`` and bind this rank's GPU.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        ``auto`` takes a GPU when CuPy and a device are present.
    local_rank : int
        This rank's index among the ranks of its node; rank ``local_rank % device_count`` is used.
    """
    if device not in DEVICES:
        raise PgdError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}", collective=True)
    if device == "cpu":
        return cpu_backend()
    cupy = load_cupy()
    if cupy is None:
        if device == "gpu":
            raise PgdError("--device gpu needs CuPy and a CUDA device; install pgd[gpu] or use "
                           "--device cpu")
        return cpu_backend()
    device_id = local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device_id).use()
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return Backend(name="cupy", xp=cupy, device="gpu", device_id=device_id, description=name)
