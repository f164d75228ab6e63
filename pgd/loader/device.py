"""Loading a rank's slab onto its GPU in bounded blocks through reused pinned host buffers.

Host memory stays bounded by two blocks (double buffering: the file read of one block overlaps the copy
of the previous one), not by the slice. Before anything is read, every rank checks that its slice fits
the device's free memory; otherwise all ranks stop with one line giving the sizes and the fix.
"""

from __future__ import annotations

import numpy as np

from pgd.comm.host import collectively
from pgd.data import count_nonfinite, read_rows
from pgd.device.ops import CupyOps
from pgd.errors import InputError
from pgd.runtime import settings
from pgd.runtime.hostmem import format_bytes

#: Bytes of X per loading block.
LOAD_BLOCK_BYTES = 64 << 20
#: Device memory kept free for the CUDA context, kernels and small buffers (``PGD_GPU_RESERVE_BYTES``).
RESERVE_BYTES = 256 << 20


def device_bytes_needed(n_local: int, d: int, itemsize: int, reserve: int | None = None) -> int:
    """Device memory a slice needs: X, y, two row-sized work vectors, and a reserve."""
    if reserve is None:
        reserve = settings.gpu_reserve_bytes(RESERVE_BYTES)
    return n_local * (d + 3) * itemsize + reserve


def check_fits(*, rank: int, n_local: int, d: int, dtype, free: int, device_id, ranks: int) -> None:
    """Raise a one-line :class:`InputError` when the slice does not fit the free device memory.

    Parameters
    ----------
    rank, ranks : int
        This rank and the number of ranks (for the suggested fix).
    n_local, d : int
        Shape of this rank's slice.
    dtype : numpy dtype
        Compute dtype.
    free : int
        Free device memory in bytes.
    device_id : int
        The GPU (for the message).
    """
    itemsize = np.dtype(dtype).itemsize
    need = device_bytes_needed(n_local, d, itemsize)
    if need > free:
        more = max(ranks + 1, -(-ranks * need // max(free, 1)))
        raise InputError(
            f"rank {rank}: its {n_local} x {d} {np.dtype(dtype).name} slice needs {format_bytes(need)} on GPU "
            f"{device_id} but only {format_bytes(free)} is free; use about {more} ranks (more GPUs or nodes), "
            f"{'--dtype float32, ' if itemsize > 4 else ''}or --device cpu")


def load_to_device(meta, start: int, stop: int, dtype, *, ops, locking: str,
                   block_bytes: int = LOAD_BLOCK_BYTES):
    """Read rows ``[start, stop)`` block by block into device arrays.

    Returns
    -------
    (X_device, y_host, y_device, nonfinite)
        ``y`` is kept on the host too (labels are validated there); ``nonfinite`` is ``(count,
        first_local_row)`` over X and y as :func:`pgd.data.count_nonfinite` gives.
    """
    dtype = np.dtype(dtype)
    rows = stop - start
    X = ops.empty((rows, meta.d), dtype)
    y_host = np.empty(rows, dtype=dtype) if meta.y_key else None
    block = max(1, min(rows, block_bytes // max(1, meta.d * dtype.itemsize)))
    buffers = [ops.pinned_empty((block, meta.d), dtype) for _ in range(2 if rows > block else 1)]
    count, first = 0, -1
    for index, a in enumerate(range(0, rows, block)):
        b = min(a + block, rows)
        host = buffers[index % len(buffers)][: b - a]
        read_rows(meta, start + a, start + b, dtype, x_out=host,
                  y_out=None if y_host is None else y_host[a:b], locking=locking)
        block_count, block_first = count_nonfinite(host)
        if block_count and first < 0:
            first = a + block_first
        count += block_count
        ops.synchronize()   # the previous copy is done: its buffer may be refilled next time round
        ops.copy_to_device(host, X[a:b])
    ops.synchronize()
    y_device = None
    if y_host is not None:
        y_count, y_first = count_nonfinite(y_host[:, None])
        count += y_count
        first = min([r for r in (first, y_first) if r >= 0], default=-1)
        y_device = ops.from_host(y_host)
    return X, y_host, y_device, (count, first)


def load_slab_to_device(mpi_comm, meta, start: int, stop: int, dtype, *, backend, locking: str, ops=None):
    """Check the free memory collectively, then :func:`load_to_device` (errors agreed by all ranks)."""
    if ops is None:

        ops = CupyOps(backend.xp)
    with collectively(mpi_comm):
        check_fits(rank=mpi_comm.Get_rank(), n_local=stop - start, d=meta.d, dtype=dtype,
                   free=ops.free_bytes(), device_id=backend.device_id, ranks=mpi_comm.Get_size())
    result = None
    with collectively(mpi_comm):
        result = load_to_device(meta, start, stop, dtype, ops=ops, locking=locking)
    return result
