"""Pure partitioning of rows (or columns) over ranks."""

from __future__ import annotations


def block_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Return the contiguous block ``[start, stop)`` of ``n`` items owned by ``rank``.

    The first ``n % size`` ranks get one extra item, so block sizes differ by at most one and the
    blocks of ranks ``0..size-1`` cover ``0..n-1`` once, in order.

    Parameters
    ----------
    n : int
        Number of items (rows or columns), ``n >= 0``.
    size : int
        Number of ranks, ``size >= 1``.
    rank : int
        This rank, ``0 <= rank < size``.

    Returns
    -------
    tuple of int
        ``(start, stop)``.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
