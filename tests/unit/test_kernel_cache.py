"""The kernels' disk cache is compiled again when any of their sources changes (pgd/local/kernel_cache.py),
not only when the file of the function itself does (numba's own check)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

import pgd  # noqa: E402
from pgd.local import kernel_cache  # noqa: E402

COMPILE_ONE = """
import json, numpy as np
from pgd.local import cpu_kernels as K
z, y, rbuf, lbuf = np.zeros(8), np.zeros(8), np.zeros(8), np.zeros(8)
K._squared_terms(z, y, None, 0, 8, rbuf, lbuf)
stats = K._squared_terms.stats
print(json.dumps({"file": K.__file__, "locator": type(K._squared_terms._cache._impl._locator).__name__,
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def test_stamp_follows_every_source(tmp_path):
    """The stamp is the hash of all the files' contents: it changes with any one of them."""
    files = [tmp_path / name for name in ("a.py", "b.py")]
    for path in files:
        path.write_text("x = 1\n")
    before = kernel_cache.sources_stamp([str(path) for path in files])
    files[1].write_text("x = 2\n")
    assert kernel_cache.sources_stamp([str(path) for path in files]) != before


def test_a_change_to_simd_alone_compiles_the_kernels_again(tmp_path):
    """A copy of the package with its own numba cache: the first run compiles, the second loads from the
    cache, and after an edit of ``simd.py`` (not the kernel's own file) the third compiles again."""
    shutil.copytree(Path(pgd.__file__).parent, tmp_path / "pgd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))

    def hits_and_misses():
        done = subprocess.run([sys.executable, "-c", COMPILE_ONE], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert Path(report["file"]).is_relative_to(tmp_path) and report["locator"] == "KernelSourcesLocator"
        return report["hits"], report["misses"]

    assert hits_and_misses() == (0, 1)
    assert hits_and_misses() == (1, 0)
    with open(tmp_path / "pgd" / "local" / "simd.py", "a") as simd:
        simd.write("\n# edited\n")
    assert hits_and_misses() == (0, 1)
    assert hits_and_misses() == (1, 0)


def test_unreadable_sources_leave_numbas_own_stamp(monkeypatch):
    """Where the sources cannot be read (a zipped install), the stamp is numba's alone, as before."""
    class NumbasLocator:
        def get_source_stamp(self):
            return "numba's stamp"

    locator = kernel_cache.KernelSourcesLocator(NumbasLocator())
    assert locator.get_source_stamp() == ("numba's stamp", kernel_cache.sources_stamp())

    def unreadable():
        raise FileNotFoundError("no such file")

    monkeypatch.setattr(kernel_cache, "sources_stamp", unreadable)
    assert locator.get_source_stamp() == "numba's stamp"
