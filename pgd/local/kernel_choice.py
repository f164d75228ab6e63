"""When the compiled CPU kernels run: the one size rule of ``PGD_CPU_KERNEL`` (``auto``, ``fused``, ``blocked``)
shared by the dense, CSR and multinomial local gradients (:mod:`pgd.local.linear`, :mod:`pgd.local.sparse`,
:mod:`pgd.local.multinomial`)."""

from __future__ import annotations

__all__ = ["AUTO_MIN_SLAB_BYTES", "AUTO_MIN_SLAB_BYTES_MULTINOMIAL", "size_choice"]

#: ``PGD_CPU_KERNEL=auto`` leaves a rank's slab below this size to the blocked path.  Loading the compiled
#: kernel costs a process about 0.45 s (numba's import 0.23 s, the cached code, the start-up check; measured as
#: the run summary's set-up time with and without it), and it saves about 2.5 ms (squared) to 4.5 ms
#: (logistic) per evaluation per 100 MB of float32 rows at d = 100 on one thread (docs/cpu_kernels.md): from
#: 256 MiB a run repays the load within 40 to 70 evaluations, and big slabs within a few.
AUTO_MIN_SLAB_BYTES = 256 << 20
#: ... and the multinomial kernel's: it saves about 25 ms per evaluation per 100 MB at K = 5 (the blocked
#: path's skinny GEMMs and NumPy softmax are slow), so it repays the load within about 30 evaluations from
#: 64 MiB.
AUTO_MIN_SLAB_BYTES_MULTINOMIAL = 64 << 20


def size_choice(n_bytes: int, choice: str, minimum: int = AUTO_MIN_SLAB_BYTES) -> str:
    """Why the compiled kernel is not tried for a slab of ``n_bytes`` under ``PGD_CPU_KERNEL=choice``, ``auto``
    taking it from ``minimum`` bytes, or ``""``."""
    if choice == "blocked":
        return "PGD_CPU_KERNEL=blocked"
    if choice == "auto" and n_bytes < minimum:
        return f"slab below {minimum >> 20} MiB: the compiled kernel would not repay its load time"
    return ""
