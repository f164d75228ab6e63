"""Host memory a rank can have before it loads its rows: the node's available memory and the cgroup limits
(v1 and v2, as SLURM and containers set them), shared by the ranks of the node.

Conventions
-----------
Sizes are bytes; a source that cannot be read (not Linux, no cgroup memory controller) is None and does not
count. A cgroup's available memory is its limit minus what it uses, not counting the inactive file cache
(which the kernel reclaims on demand).
"""

from __future__ import annotations

import os

import numpy as np

from pgd.errors import InputError

_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def format_bytes(nbytes: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``300 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` of the node in bytes."""
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_number(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _inactive_file(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_directories(proc_cgroup: str, root: str) -> list[tuple[str, str, str, str]]:
    """``(directory, limit file, usage file, inactive-cache key)`` of this process's memory cgroups and their
    ancestors (a container may see its own cgroup as the root of the hierarchy)."""
    found = []
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = os.path.join(root, "memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                         "total_inactive_file")
        else:
            continue
        relative = path.strip("/")
        while True:
            found.append((os.path.join(base, relative) if relative else base, *files))
            if not relative:
                break
            relative = os.path.dirname(relative)
    return found


def cgroup_available(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The least memory left under any memory limit of this process's cgroups, or None without a limit."""
    best = None
    for directory, limit_file, usage_file, inactive_key in _cgroup_directories(proc_cgroup, root):
        limit = _read_number(os.path.join(directory, limit_file))
        usage = _read_number(os.path.join(directory, usage_file))
        if limit is None or usage is None or limit >= _UNLIMITED:
            continue
        usage -= _inactive_file(os.path.join(directory, "memory.stat"), inactive_key)
        left = max(0, limit - max(usage, 0))
        best = left if best is None else min(best, left)
    return best


def available_bytes() -> int | None:
    """Memory the processes of this node can still have: the smaller of MemAvailable and the cgroup room."""
    sources = [value for value in (meminfo_available(), cgroup_available()) if value is not None]
    return min(sources) if sources else None


def host_bytes_needed(rows: int, d: int, itemsize: int) -> int:
    """Host memory a slab needs: X, y and two row-sized work vectors."""
    return rows * (d + 3) * itemsize


def csr_bytes_needed(rows: int, nnz: int, itemsize: int, index_itemsize: int) -> int:
    """Host memory a CSR slab needs: its values, indices and row pointer, y and two row-sized work vectors."""
    return nnz * (itemsize + index_itemsize) + 8 * (rows + 1) + 3 * rows * itemsize


def check_fits_in_memory(*, rank: int, rows: int, d: int, dtype, available: int | None, ranks_here: int,
                         ranks: int, nnz: int | None = None, index_itemsize: int = 4) -> None:
    """Raise a one-line :class:`InputError` when this rank's slab cannot fit its share of the node's memory.

    Parameters
    ----------
    rank, ranks : int
        This rank and the ranks that split the rows (for the suggested fix).
    rows, d : int
        Shape of this rank's slab.
    nnz : int, optional
        Stored values of a CSR slab (then :func:`csr_bytes_needed` with ``index_itemsize``-byte indices).
    dtype : numpy dtype
        Compute dtype.
    available : int or None
        Memory the node can still give (:func:`available_bytes`); None skips the check.
    ranks_here : int
        Ranks of the job on this node, which share ``available``.
    """
    if available is None:
        return
    itemsize = np.dtype(dtype).itemsize
    need = (host_bytes_needed(rows, d, itemsize) if nnz is None
            else csr_bytes_needed(rows, nnz, itemsize, index_itemsize))
    share = available // max(ranks_here, 1)
    if need <= share:
        return
    more = max(ranks + 1, -(-ranks * need // max(share, 1)))
    stored = "" if nnz is None else f" ({nnz} non-zeros)"
    raise InputError(
        f"rank {rank}: its {rows} x {d} {np.dtype(dtype).name} rows{stored} need {format_bytes(need)} of memory "
        f"but about {format_bytes(share)} is available to it ({format_bytes(available)} free on its node, shared by "
        f"{ranks_here} rank(s)); use about {more} ranks on more nodes"
        + (", or --dtype float32" if itemsize > 4 else ""))
