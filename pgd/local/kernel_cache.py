"""numba's disk cache for the kernels, invalidated by a change to any source their machine code comes from.

numba checks a cached function against its own file only, but the compiled kernels take code from several
modules: :mod:`pgd.local.cpu_kernels` inlines the intrinsics of :mod:`pgd.local.simd` and the constants of
:mod:`pgd.local.subnormal`, and :mod:`pgd.local.cpu_multinomial` inlines the kernel's functions.  Edit
``simd.py`` alone and numba would go on loading the old machine code.  :class:`KernelSourcesLocator` gives
the functions of :data:`KERNEL_SOURCES` the hash of all of them as their source stamp, so that a change to
any one compiles them all again; :func:`install` puts it first among numba's cache locators (functions of
other files keep numba's own).  Without numba, or with a numba whose cache machinery differs from the one
this was written for, nothing is installed and numba's own check applies.
"""

from __future__ import annotations

import functools
import hashlib
import os

try:  # numba is optional: without it nothing is compiled or cached
    from numba.core import caching
except ImportError:  # pragma: no cover - the kernels are not used without numba
    caching = None

__all__ = ["KERNEL_SOURCES", "KernelSourcesLocator", "install", "sources_stamp"]

_HERE = os.path.dirname(os.path.realpath(__file__))
#: The modules whose compiled functions depend on one another's source: each is part of every one's stamp.
KERNEL_SOURCES = tuple(os.path.join(_HERE, name)
                       for name in ("cpu_kernels.py", "cpu_multinomial.py", "simd.py", "subnormal.py"))


@functools.lru_cache(maxsize=8)
def _stamp_of(files: tuple) -> str:
    digest = hashlib.sha256()
    for path, _modified, _size in files:
        with open(path, "rb") as source:
            digest.update(hashlib.sha256(source.read()).digest())
    return digest.hexdigest()


def sources_stamp(paths=KERNEL_SOURCES) -> str:
    """The SHA-256 of the contents of ``paths`` (hashed again only when a file's time or size changes)."""
    files = []
    for path in paths:
        status = os.stat(path)
        files.append((path, status.st_mtime_ns, status.st_size))
    return _stamp_of(tuple(files))


#: numba's class that picks a function's locator (``CacheImpl``; ``_CacheImpl`` in older numba).
_CACHE_IMPL = None if caching is None else getattr(caching, "CacheImpl", getattr(caching, "_CacheImpl", None))

if _CACHE_IMPL is not None and hasattr(caching, "_CacheLocator") and hasattr(_CACHE_IMPL, "_locator_classes"):
    class KernelSourcesLocator(caching._CacheLocator):
        """numba's locator for a function of :data:`KERNEL_SOURCES` (where and under which name it is
        cached), with :func:`sources_stamp` added to its source stamp."""

        def __init__(self, inner):
            self._inner = inner

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        def get_source_stamp(self):
            try:
                return self._inner.get_source_stamp(), sources_stamp()
            except OSError:       # a source that cannot be read (a zipped install): numba's own stamp
                return self._inner.get_source_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.realpath(py_file) not in KERNEL_SOURCES:
                return None
            for other in _CACHE_IMPL._locator_classes:
                inner = None if other is cls else other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            return None
else:  # pragma: no cover - without numba, or another cache machinery
    KernelSourcesLocator = None


def install() -> bool:
    """Put :class:`KernelSourcesLocator` first among numba's cache locators (once); whether it is there.
    Call before the kernels' functions are decorated: numba picks a function's locator then."""
    if KernelSourcesLocator is None:
        return False
    locators = _CACHE_IMPL._locator_classes
    if KernelSourcesLocator not in locators:
        locators.insert(0, KernelSourcesLocator)
    return True
