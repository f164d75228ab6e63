"""When the compiled CPU kernels run: the one size rule of ``PGD_CPU_KERNEL`` (``auto``, ``fused``, ``blocked``)
shared by the dense, CSR and multinomial local gradients (:mod:`pgd.local.linear`, :mod:`pgd.local.sparse`,
:mod:`pgd.local.multinomial`)."""

from __future__ import annotations

__all__ = ["AUTO_MIN_SLAB_BYTES", "size_choice"]

#: ``PGD_CPU_KERNEL=auto`` leaves slabs below this size to the blocked path: loading the compiled kernel from
#: its disk cache costs about 0.8 s per process, more than it saves on a few hundred passes over a small slab.
#: Above it the dense binary kernel runs for every d, loss, dtype and thread count: it measured faster than the
#: blocked path in all of them (docs/cpu_kernels.md, "Prefetching the next block"); the multinomial kernel adds
#: a bound on K (:data:`pgd.local.multinomial.AUTO_MAX_CLASSES`).
AUTO_MIN_SLAB_BYTES = 32 << 20


def size_choice(n_bytes: int, choice: str) -> str:
    """Why the compiled kernel is not tried for a slab of ``n_bytes`` under ``PGD_CPU_KERNEL=choice`` (dense,
    CSR or multinomial), or ``""``."""
    if choice == "blocked":
        return "PGD_CPU_KERNEL=blocked"
    if choice == "auto" and n_bytes < AUTO_MIN_SLAB_BYTES:
        return f"slab below {AUTO_MIN_SLAB_BYTES >> 20} MiB: the compiled kernel would not repay its load time"
    return ""
