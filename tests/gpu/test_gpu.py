"""GPU tests: run on the lent GPU machine (skipped without CuPy and a CUDA device).

Fused kernel against a float64 reference with poisoned outputs; GPU training against CPU training
(float64 to 1e-10 relative, float32 to 1e-4); the blocked pinned loader; host staging with two ranks
sharing one GPU; NCCL with one rank, and its refusal of two ranks on one GPU.
"""

import numpy as np
import pytest

from support.files import write_dataset, write_loss_datasets
from support.mpi import run_pgd, train_params

cupy = pytest.importorskip("cupy")
from pgd.device.backend import load_cupy  # noqa: E402

if load_cupy() is None:
    pytest.skip("no CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu

TOL = {"float64": 1e-10, "float32": 1e-4}


def _reference(X, y, w, offset, loss, fit_intercept=True):
    from pgd.local.linear import LocalLinearGradient
    from pgd.local.losses import get_loss

    X64, y64, w64 = (np.asarray(a, dtype=np.float64) for a in (X, y, w))
    out = np.full(X.shape[1] + 2, np.nan)
    local = LocalLinearGradient(X64, y64, get_loss("squared" if loss == "gram" else loss),
                                fit_intercept=fit_intercept, xp=np)
    if loss == "gram":
        local.gram_matvec(w64, offset, out)
    else:
        local.loss_gradient(w64, offset, out)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["squared", "logistic", "gram"])
@pytest.mark.parametrize("n, d", [(1, 1), (1000, 7), (5000, 16), (3001, 64), (2000, 100), (777, 256),
                                  (600, 1024), (500, 1030), (300, 2100), (0, 8), (4099, 4), (2001, 2),
                                  (1500, 12), (999, 24), (333, 2048), (100_003, 64)])
def test_fused_kernel_against_float64(dtype, loss, n, d):
    from pgd.device.kernels import FusedGradient

    rng = np.random.default_rng(n + d)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (rng.random(n) < 0.5).astype(dtype) if loss == "logistic" else rng.standard_normal(n).astype(dtype)
    w = (rng.standard_normal(d) / np.sqrt(d)).astype(dtype)
    offset = float(np.asarray(0.2, dtype=dtype))   # the kernel casts the intercept to the data type
    fused = FusedGradient(cupy, cupy.asarray(X), cupy.asarray(y), fit_intercept=True)
    out = cupy.full(d + 2, cupy.nan)          # poisoned: the kernel must overwrite every entry
    fused(cupy.asarray(np.append(w.astype(np.float64), 0.2)), loss, out)
    got, expected = cupy.asnumpy(out), _reference(X, y, w, offset, loss)
    scale = np.maximum(np.abs(expected), np.linalg.norm(expected[:d]) + 1.0)
    assert np.all(np.abs(got - expected) <= TOL[dtype] * scale), np.max(np.abs(got - expected) / scale)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_kernel_on_a_misaligned_row_slice(dtype):
    from pgd.device.kernels import FusedGradient

    rng = np.random.default_rng(5)
    X = rng.standard_normal((101, 12)).astype(dtype)
    y = rng.standard_normal(101).astype(dtype)
    w = rng.standard_normal(12).astype(dtype)
    # rows 1..80 of a slab whose rows are 48/96 bytes: the slice of a float32 slab starts 48 bytes in
    fused = FusedGradient(cupy, cupy.asarray(X), cupy.asarray(y), fit_intercept=False)
    out = cupy.full(14, cupy.nan)
    fused(cupy.asarray(np.append(w.astype(np.float64), 0.0)), "squared", out, rows=slice(1, 81))
    expected = _reference(X[1:81], y[1:81], w, 0.0, "squared", fit_intercept=False)
    np.testing.assert_allclose(cupy.asnumpy(out), expected, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("d, l2", [(1, 0.0), (64, 0.1), (5000, 0.01)])
def test_finish_kernel_against_its_numpy_model(d, l2):
    from pgd.device.kernels import FinishKernel, simulate_finish
    from pgd.device.ops import CupyOps

    rng = np.random.default_rng(d)
    sums, params = rng.standard_normal(d + 2), rng.standard_normal(d + 1)
    grad = cupy.full(d + 1, cupy.nan)
    loss, norm_sq = FinishKernel(cupy, CupyOps(cupy))(cupy.asarray(sums), cupy.asarray(params), grad, 777.0, l2)
    expected_grad = np.empty(d + 1)
    expected = simulate_finish(sums, params, expected_grad, 777.0, l2)
    np.testing.assert_allclose(cupy.asnumpy(grad), expected_grad, rtol=1e-13, atol=1e-15)  # FMA rounding
    np.testing.assert_allclose((loss, norm_sq), expected, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_fused_kernel_passes_its_self_check(dtype):
    from pgd.device.kernels import FusedGradient
    from pgd.local.linear import self_check

    rng = np.random.default_rng(11)
    X = cupy.asarray(rng.standard_normal((9000, 64)).astype(dtype))
    y = cupy.asarray((rng.random(9000) < 0.5).astype(dtype))
    fused = FusedGradient(cupy, X, y, fit_intercept=True)
    assert self_check(fused, ("squared", "logistic", "gram")) is None


def test_cupy_ops_and_blocked_loader(tmp_path):
    from pgd.data import inspect_dataset
    from pgd.device.ops import CupyOps
    from pgd.loader.device import load_to_device

    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((1000, 9)), rng.standard_normal(1000)
    meta = inspect_dataset(write_dataset(tmp_path / "d.h5", X, y), x_key="X", y_key="y")
    ops = CupyOps(cupy)
    assert ops.free_bytes() > 0
    X_dev, _, y_dev, nonfinite = load_to_device(meta, 100, 900, np.float64, ops=ops, locking="false",
                                                block_bytes=9 * 8 * 64)
    np.testing.assert_array_equal(cupy.asnumpy(X_dev), X[100:900])
    np.testing.assert_array_equal(cupy.asnumpy(y_dev), y[100:900])
    assert nonfinite == (0, -1)


def _train(tmp_path, ranks, name, data, loss, dtype, *extra):
    return train_params(ranks, tmp_path / f"{name}.h5", data, "--loss", loss, "--dtype", dtype, "--max-iter", "200",
                        "--tol", "0", "--rtol", "0", "--lr", "0.05", *extra)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_loss_datasets(tmp_path_factory.mktemp("gpu"), 4001, 33, seed=7)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_gpu_training_matches_cpu(tmp_path, datasets, loss, dtype):
    cpu, _, _ = _train(tmp_path, 1, "cpu", datasets[loss], loss, dtype, "--device", "cpu")
    gpu, attrs, stdout = _train(tmp_path, 1, "gpu", datasets[loss], loss, dtype, "--device", "gpu")
    np.testing.assert_allclose(gpu, cpu, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(cpu).max())
    assert "gpu (cupy)" in attrs["device"] and "MPI on device buffers: host staging" in stdout
    assert attrs["gradient_kernel"] == "fused one-pass kernel" and "gradient: fused one-pass kernel" in stdout


@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["off", "auto"])
def test_staging_with_two_ranks_sharing_the_gpu(tmp_path, datasets, mode):
    cpu, _, _ = _train(tmp_path, 2, "cpu", datasets["logistic"], "logistic", "float64", "--device", "cpu")
    gpu, attrs, _ = _train(tmp_path, 2, "gpu", datasets["logistic"], "logistic", "float64", "--device", "gpu",
                           "--cuda-aware", mode)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-10 * np.abs(cpu).max())
    assert attrs["cuda_aware"].startswith("host staging") and attrs["replicas_identical"]


@pytest.mark.mpi
def test_nccl_one_rank_and_refusal_of_a_shared_gpu(tmp_path, datasets):
    cpu, _, _ = _train(tmp_path, 1, "cpu", datasets["squared"], "squared", "float64", "--device", "cpu")
    gpu, attrs, _ = _train(tmp_path, 1, "nccl", datasets["squared"], "squared", "float64", "--device", "gpu",
                           "--comm", "nccl")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-10 * np.abs(cpu).max())
    assert attrs["communicator"] == "nccl"
    if cupy.cuda.runtime.getDeviceCount() == 1:
        shared = run_pgd(2, "train", datasets["squared"], "--loss", "squared", "--device", "gpu", "--comm", "nccl",
                         "--max-iter", "2", timeout=300)
        assert shared.returncode != 0 and "needs one GPU per rank" in shared.stderr


@pytest.mark.mpi
def test_memory_check_message_on_the_gpu(datasets):
    result = run_pgd(1, "train", datasets["squared"], "--loss", "squared", "--device", "gpu", "--max-iter", "1",
                     env={"PGD_GPU_RESERVE_BYTES": str(1 << 50)}, timeout=300)
    assert result.returncode != 0 and "slice needs" in result.stderr and "--device cpu" in result.stderr
