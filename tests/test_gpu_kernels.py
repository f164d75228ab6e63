"""The fused kernel without a GPU: nvcc compiles every instantiation; the work split is checked in NumPy."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from pgd.gpu_kernels import (GENERIC_CHUNKS, MAX_VEC_CHUNKS, instantiations, module_source, plan_launch,
                             simulate_fused)
from pgd.losses import LocalLinearGradient, get_loss

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_every_instantiation_compiles_for_sm90(tmp_path):
    source = tmp_path / "fused.cu"
    source.write_text(module_source())
    ptx = tmp_path / "fused.ptx"
    result = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "-ptx", "-Werror=all-warnings", str(source),
                             "-o", str(ptx)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx.read_text()))
    names = {name for name, *_ in instantiations()}
    assert len(names) == 2 * 3 * (4 + len(GENERIC_CHUNKS))
    assert names <= entries, sorted(names - entries)


@pytest.mark.parametrize("itemsize, d, aligned, vectorised, chunks, tiles", [
    (4, 16, True, True, 1, 1), (4, 64, True, True, 1, 1), (4, 256, True, True, 2, 1),
    (4, 1024, True, True, MAX_VEC_CHUNKS, 1), (4, 1028, True, False, 32, 2), (4, 64, False, False, 2, 1),
    (4, 1, True, False, 1, 1), (4, 1030, True, False, 32, 2), (4, 5000, True, False, 32, 5),
    (8, 512, True, True, MAX_VEC_CHUNKS, 1), (8, 1024, True, False, 32, 1), (8, 63, True, False, 2, 1),
])
def test_plan(itemsize, d, aligned, vectorised, chunks, tiles):
    plan = plan_launch(10_000, d, itemsize, aligned=aligned, max_blocks=1056)
    assert (plan.vectorised, plan.chunks, plan.tiles) == (vectorised, chunks, tiles)
    assert plan.tile_width * plan.tiles >= d and plan.shared_bytes <= 48 * 1024
    assert plan.blocks == 1056 and plan.threads == 256


def test_small_problem_launches_few_blocks():
    assert plan_launch(20, 64, 4, aligned=True, max_blocks=1056).blocks == 3


@pytest.mark.parametrize("loss", ["squared", "logistic", "gram"])
@pytest.mark.parametrize("n, d, itemsize, aligned, blocks", [
    (37, 8, 4, True, 2), (50, 100, 4, True, 1), (40, 260, 8, True, 3), (33, 7, 4, True, 1),
    (29, 70, 4, False, 2), (9, 1030, 4, True, 1),
])
def test_simulated_work_split_matches_float64(loss, n, d, itemsize, aligned, blocks):
    rng = np.random.default_rng(n * d)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 0.5).astype(float)
    w = rng.standard_normal(d) / np.sqrt(d)
    plan = plan_launch(n, d, itemsize, aligned=aligned, max_blocks=blocks)
    out = simulate_fused(X, y, w, 0.3, loss, True, plan)
    expected = np.full(d + 2, np.nan)   # poisoned: the reference must overwrite every entry
    if loss == "gram":
        LocalLinearGradient(X, y, get_loss("squared"), fit_intercept=True, xp=np).gram_matvec(w, 0.3, expected)
    else:
        LocalLinearGradient(X, y, get_loss(loss), fit_intercept=True, xp=np).loss_gradient(w, 0.3, expected)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
