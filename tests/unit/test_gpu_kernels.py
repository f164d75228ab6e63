"""The GPU kernels without a GPU: nvcc compiles every instantiation; the fused kernel's work split, the
finishing kernel and the start-up self-check are exercised in NumPy."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from pgd.device.kernels import (
    FINISH_SOURCE,
    GENERIC_CHUNKS,
    MAX_VEC_CHUNKS,
    all_plans,
    instantiations,
    module_source,
    plan_launch,
    resident_blocks,
    simulate_finish,
    simulate_fused,
)
from pgd.local.linear import LocalLinearGradient, self_check
from pgd.local.losses import get_loss
from tests.unit.test_optimizers import CASES, _build, make_objective

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)


def _nvcc(tmp_path, source: str, *flags) -> str:
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    out = tmp_path / "kernels.out"
    result = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "-Werror=all-warnings", *flags, str(path),
                             "-o", str(out)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow  # compiles every kernel variant with nvcc (about 17 s)
@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_every_instantiation_compiles_for_sm90_without_spilling(tmp_path):
    report = _nvcc(tmp_path, module_source() + FINISH_SOURCE, "-cubin", "-Xptxas", "-v")
    compiled = re.findall(r"Compiling entry function '(\w+)'", report)
    names = {name for name, _ in instantiations()}
    assert len(names) == 2 * 3 * (6 + 4 + len(GENERIC_CHUNKS))
    assert names | {"pgd_finish"} == set(compiled)
    spills = [int(count) for count in re.findall(r"(\d+) bytes spill stores", report)]
    assert len(spills) == len(compiled) and max(spills) == 0, "a kernel spills registers to local memory"


@pytest.mark.parametrize("itemsize, d, aligned, expected", [
    # (vectorised, lanes, chunks, unroll, tiles)
    (4, 16, True, (True, 4, 1, 4, 1)), (4, 64, True, (True, 16, 1, 4, 1)),
    (4, 256, True, (True, 32, 2, 2, 1)), (4, 1024, True, (True, 32, 8, 1, 1)),
    (4, 2048, True, (True, 32, MAX_VEC_CHUNKS, 1, 1)), (4, 4, True, (True, 1, 1, 4, 1)),
    (4, 100, True, (True, 32, 1, 4, 1)), (4, 1028, True, (True, 32, 16, 1, 1)),
    (4, 64, False, (False, 32, 2, 1, 1)), (4, 1, True, (False, 32, 1, 1, 1)),
    (4, 1030, True, (False, 32, 32, 1, 2)), (4, 5000, True, (False, 32, 32, 1, 5)),
    (8, 512, True, (True, 32, 8, 1, 1)), (8, 1024, True, (True, 32, 16, 1, 1)),
    (8, 16, True, (True, 8, 1, 4, 1)), (8, 63, True, (False, 32, 2, 1, 1)),
])
def test_plan(itemsize, d, aligned, expected):
    plan = plan_launch(10_000_000, d, itemsize, aligned=aligned, max_blocks=1056)
    assert (plan.vectorised, plan.lanes, plan.chunks, plan.unroll, plan.tiles) == expected
    assert plan.tile_width * plan.tiles >= d and plan.shared_bytes <= 48 * 1024
    assert plan.blocks == 1056 and plan.threads == 256
    if plan.vectorised:   # at least four 16-byte loads in flight per lane and iteration
        assert plan.unroll * plan.chunks >= 4 and plan.rows_per_step == 32 // plan.lanes * plan.unroll


def test_every_plan_has_an_instantiation():
    names = {name for name, _ in instantiations()}
    for d in range(1, 2100, 7):
        for itemsize in (4, 8):
            for aligned in (True, False):
                plan = plan_launch(1000, d, itemsize, aligned=aligned, max_blocks=64)
                assert any(name.endswith(f"_{plan.lanes}x{plan.chunks}x{plan.unroll}") if plan.vectorised
                           else name.endswith(f"_gen_{plan.chunks}") for name in names)
    assert len(list(all_plans())) == 16


def test_small_problems_launch_few_blocks():
    # d = 64 float32: 8 rows per warp and iteration, 8 warps per block, 4 iterations per warp at least
    assert plan_launch(20, 64, 4, aligned=True, max_blocks=1056).blocks == 1
    assert plan_launch(100_000, 64, 4, aligned=True, max_blocks=1056).blocks == 391


@pytest.mark.parametrize("registers, shared, blocks", [(0, 512, 8), (32, 512, 8), (53, 512, 4), (64, 512, 4),
                                                       (128, 8192, 2), (236, 16384, 1), (255, 16384, 1),
                                                       (32, 100 * 1024, 2)])
def test_resident_blocks(registers, shared, blocks):
    assert resident_blocks(registers, shared) == blocks


def _reference(X, y, w, offset, loss):
    expected = np.full(X.shape[1] + 2, np.nan)   # poisoned: the reference must overwrite every entry
    if loss == "gram":
        LocalLinearGradient(X, y, get_loss("squared"), fit_intercept=True, xp=np).gram_matvec(w, offset, expected)
    else:
        LocalLinearGradient(X, y, get_loss(loss), fit_intercept=True, xp=np).loss_gradient(w, offset, expected)
    return expected


@pytest.mark.parametrize("loss", ["squared", "logistic", "gram"])
@pytest.mark.parametrize("n, d, itemsize, aligned, blocks", [
    (37, 8, 4, True, 2), (50, 100, 4, True, 1), (40, 260, 8, True, 3), (33, 7, 4, True, 1),
    (29, 70, 4, False, 2), (9, 1030, 4, True, 1), (61, 16, 4, True, 1), (45, 4, 4, True, 2),
    (70, 2, 8, True, 1), (23, 1024, 4, True, 2), (19, 2048, 4, True, 1), (90, 12, 8, True, 2),
])
def test_simulated_work_split_matches_float64(loss, n, d, itemsize, aligned, blocks):
    rng = np.random.default_rng(n * d)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 0.5).astype(float)
    w = rng.standard_normal(d) / np.sqrt(d)
    plan = plan_launch(n, d, itemsize, aligned=aligned, max_blocks=blocks)
    out = simulate_fused(X, y, w, 0.3, loss, True, plan)
    np.testing.assert_allclose(out, _reference(X, y, w, 0.3, loss), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d, l2", [(1, 0.0), (5, 0.3), (300, 0.01), (1000, 0.0)])
def test_simulated_finish_matches_the_host_normalisation(d, l2):
    rng = np.random.default_rng(d)
    sums, params = rng.standard_normal(d + 2), rng.standard_normal(d + 1)
    grad = np.full(d + 1, np.nan)
    loss, norm_sq = simulate_finish(sums, params, grad, 1234.0, l2)
    expected = sums[: d + 1] / 1234.0
    expected[:d] += l2 * params[:d]
    np.testing.assert_allclose(grad, expected, rtol=1e-15)
    assert loss == pytest.approx(sums[d + 1] / 1234.0 + 0.5 * l2 * params[:d] @ params[:d], rel=1e-14)
    assert norm_sq == pytest.approx(expected @ expected, rel=1e-14)


class HostFinish:
    """The finishing kernel's contract on the host (its NumPy model), counting calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, sums, params, grad_out, count, l2):
        self.calls += 1
        return simulate_finish(sums, params, grad_out, count, l2)


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{sorted(o)}" for n, o in CASES])
def test_optimizers_take_the_same_steps_with_the_finishing_kernel(name, options):
    plain, fused = make_objective(), make_objective()
    fused.finish = HostFinish()
    norms = []
    for objective in (plain, fused):
        optimizer = _build(name, options, objective)
        optimizer.start(np.zeros(objective.d + 1))
        trace = [optimizer.grad_norm()]
        for _ in range(15):
            optimizer.step()
            trace.append(optimizer.grad_norm())
        norms.append(trace + list(optimizer.params) + [optimizer.loss])
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-9, atol=1e-12)
    assert fused.finish.calls >= 1


def test_the_cached_gradient_norm_is_only_used_for_the_buffer_just_evaluated():
    objective = make_objective()
    objective.finish = HostFinish()
    params, grad, other = np.full(objective.d + 1, 0.1), np.empty(objective.d + 1), np.ones(objective.d + 1)
    objective.value_and_grad(params, grad)
    assert objective.dot(grad, grad) == pytest.approx(grad @ grad, rel=1e-14)
    objective._norm_sq = (grad, -1.0)   # poison the cache: the answer must come from it for grad only
    assert objective.dot(grad, grad) == -1.0
    assert objective.dot(other, other) == pytest.approx(other @ other)
    objective.lipschitz(3, seed=0)           # any other evaluation forgets it
    assert objective.dot(grad, grad) == pytest.approx(grad @ grad, rel=1e-14)


class FakeFused:
    """A stand-in for FusedGradient run by NumPy: the reference sums, optionally corrupted."""

    def __init__(self, X, y, corrupt=0.0):
        self.cupy, self.X, self.y = np, X, y
        self.n, self.d = X.shape
        self.dtype = np.dtype(X.dtype)
        self.fit_intercept = np.int32(1)
        self.corrupt = corrupt
        self.rows_seen = []

    def __call__(self, params, loss, out, rows=None):
        rows = rows or slice(0, self.n)
        self.rows_seen.append((rows.start, rows.stop))
        X, y = self.X[rows].astype(np.float64), self.y[rows].astype(np.float64)
        w = params[: self.d].astype(self.dtype).astype(np.float64)
        out[...] = _reference(X, y, w, float(params[self.d].astype(self.dtype)), loss)
        out[0] += self.corrupt * (1 + abs(out[0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_self_check_accepts_a_correct_kernel_and_rejects_a_wrong_one(dtype):
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((5000, 24)).astype(dtype), (rng.random(5000) < 0.5).astype(dtype)
    good = FakeFused(X, y)
    assert self_check(good, ("logistic", "gram")) is None
    assert good.rows_seen == [(0, 4096), (0, 4096)]
    problem = self_check(FakeFused(X, y, corrupt=1e-2), ("squared",))
    assert problem.startswith("the fused squared kernel differs from the two-pass result by")
    assert self_check(FakeFused(X[:0], y[:0]), ("squared",)) is None


@pytest.mark.parametrize("name, options", [("gd", {}), ("lbfgs", {"memory": 3}), ("gd", {"l2": 0.1})])
@pytest.mark.parametrize("dtype, d", [("float64", 6), ("float32", 16), ("float32", 5)])
def test_the_gpu_objective_host_code_on_a_fake_cupy(name, options, dtype, d):
    """FusedGradient, the self-check, FinishKernel and DataParallelObjective's device branch, with every
    launch checked for argument types and grid and run by the kernels' NumPy models."""
    from pgd.device.kernels import FinishKernel
    from pgd.device.ops import CupyOps
    from pgd.strategies import DataParallelObjective
    from support.gpu_fakes import FakeCupy
    from tests.unit.test_optimizers import SumComm

    options = dict(options)
    l2 = options.pop("l2", 0.0)
    rng = np.random.default_rng(d)
    X = rng.standard_normal((45, d)).astype(dtype)
    y = (X @ rng.standard_normal(d) + 0.2 + 0.1 * rng.standard_normal(45)).astype(dtype)
    fake = FakeCupy()
    objectives = []
    for xp in (np, fake):
        X_dev, y_dev = (np.asarray(a).view(type(xp.asarray(a))) for a in (X.copy(), y.copy()))
        local = LocalLinearGradient(X_dev, y_dev, get_loss("squared"), fit_intercept=True, xp=xp)
        finish = FinishKernel(fake, CupyOps(fake)) if xp is fake else None
        objectives.append(DataParallelObjective(local, SumComm(), 45, l2, xp, curvature=1.0, finish=finish))
    assert objectives[1].local.kernel == "fused one-pass kernel"
    assert fake.launches.count(next(n for n in fake.launches if "squared" in n)) == 1   # the self-check
    traces = []
    for objective in objectives:
        optimizer = _build(name, dict(options, lr=0.05) if name == "gd" else options, objective)
        optimizer.start(np.asarray(np.zeros(d + 1)).view(type(objective.xp.asarray(np.zeros(1)))))
        trace = [objective.lipschitz(5, seed=1), optimizer.grad_norm()]
        for _ in range(6):
            optimizer.step()
            trace.append(optimizer.grad_norm())
        traces.append(np.array(trace + [optimizer.loss] + list(np.asarray(optimizer.params))))
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(traces[1], traces[0], rtol=tolerance, atol=tolerance)
    evaluations = fake.launches.count("pgd_finish")
    fused = [launch for launch in fake.launches if launch.startswith("pgd_fused_")]
    assert evaluations >= 7 and fake.memsets == len(fused) == len(fake.launches) - evaluations
    assert sum("_gram_" in launch for launch in fused) == 1 + 5   # self-check + power iterations
    assert sum("_squared_" in launch for launch in fused) == 1 + evaluations


@pytest.mark.parametrize("d, compile_error, expected", [
    (5000, None, "two-pass CuPy/cuBLAS (for d = 5000 the fused kernel would read X 5 times)"),
    (8, "NVRTC_ERROR_COMPILATION (6)\nlong log", "two-pass CuPy/cuBLAS (the fused squared kernel could not run "
                                                "(RuntimeError: NVRTC_ERROR_COMPILATION (6)); fused kernel not used)"),
])
def test_the_two_pass_path_serves_wide_rows_and_kernels_that_cannot_run(d, compile_error, expected):
    from support.gpu_fakes import FakeCupy

    fake = FakeCupy(compile_error=compile_error)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, d)).astype(np.float32), rng.standard_normal(30).astype(np.float32)
    local = LocalLinearGradient(fake.asarray(X), fake.asarray(y), get_loss("squared"), fit_intercept=True, xp=fake)
    assert local.kernel == expected and not any(name.startswith("pgd_fused") for name in fake.launches)
    got, reference = np.full(d + 2, np.nan), np.full(d + 2, np.nan)
    local.sums_at(fake.asarray(np.full(d + 1, 0.01)), got)
    LocalLinearGradient(X, y, get_loss("squared"), fit_intercept=True, xp=np).sums_at(np.full(d + 1, 0.01), reference)
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-5)
