"""``pgd train --device gpu`` end to end on a fake CuPy (``tests/fake_cupy``): the GPU path's host code
(backend binding, pinned blocked loader, host staging and CUDA-aware hand-off, fused and finishing kernels,
checkpoints) under real MPI, with every kernel launch checked and run by its NumPy model.

What only a real GPU can show (the CUDA code itself, timings, NCCL) is in tests/test_gpu.py.
"""

import json

import numpy as np
import pytest

from support.files import write_loss_datasets
from support.mpi import fake_cupy_env, run_pgd, train_params

pytestmark = pytest.mark.mpi

FAKE_CUPY = fake_cupy_env()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_loss_datasets(tmp_path_factory.mktemp("fakegpu"), 67, 8, seed=3, intercept=0.3)


def _train(tmp_path, ranks, name, data, *options, fake=True):
    return train_params(ranks, tmp_path / f"{name}.h5", data, "--max-iter", "12", "--tol", "0", "--rtol", "0",
                        "--solver", "iterative",
                        "--device", "gpu" if fake else "cpu", *options, env=FAKE_CUPY if fake else None,
                        timeout=240)


@pytest.mark.parametrize("ranks, loss, options", [
    (1, "squared", ("--dtype", "float64")),
    (2, "logistic", ("--dtype", "float64", "--optimizer", "lbfgs", "--l2", "0.1")),
    (3, "squared", ("--dtype", "float32", "--optimizer", "nesterov", "--cuda-aware", "on")),
])
def test_fake_gpu_training_equals_cpu_training(tmp_path, datasets, ranks, loss, options):
    cpu, _, _ = _train(tmp_path, ranks, "cpu", datasets[loss], "--loss", loss, *options, fake=False)
    gpu, attrs, stdout = _train(tmp_path, ranks, "gpu", datasets[loss], "--loss", loss, *options)
    tolerance = 1e-10 if "float64" in options else 1e-5
    np.testing.assert_allclose(gpu, cpu, rtol=tolerance, atol=tolerance * np.abs(cpu).max())
    assert attrs["gradient_kernel"] == "fused one-pass kernel" and "gradient: fused one-pass kernel" in stdout
    assert attrs["device"] == "gpu (cupy)" and attrs["replicas_identical"]
    staged = "--cuda-aware" not in options or ranks == 1
    assert attrs["cuda_aware"].startswith("host staging" if staged else "cuda-aware (--cuda-aware on; confirmed")


@pytest.mark.parametrize("loss, options, method, kernel", [
    ("squared", ("--l2", "0.01"), "cholesky", "array expressions"),          # the Gram solver, standardised
    ("logistic", ("--class-weight", "balanced", "--l2", "0.01"), "lbfgs", "two-pass CuPy/cuBLAS (sample weights"),
])
def test_fake_gpu_defaults_equal_cpu(tmp_path, datasets, loss, options, method, kernel):
    """Defaults (standardisation, lbfgs or the Gram solver) and class weights on the device path."""
    common = (datasets[loss], "--loss", loss, "--dtype", "float64", *options)
    cpu, _, _ = train_params(2, tmp_path / "cpu.h5", *common, "--device", "cpu")
    gpu, attrs, _ = train_params(2, tmp_path / "gpu.h5", *common, "--device", "gpu", env=FAKE_CUPY, timeout=240)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-10 * np.abs(cpu).max())
    assert attrs["optimizer"] == method and attrs["converged"] and attrs["standardize"].startswith("on")
    assert attrs["gradient_kernel"].startswith(kernel) and attrs["device"] == "gpu (cupy)"


def test_fake_gpu_checkpoint_resume_is_exact(tmp_path, datasets):
    data, ck = datasets["squared"], str(tmp_path / "ck.h5")
    whole, _, _ = _train(tmp_path, 2, "whole", data, "--loss", "squared", "--max-iter", "12")
    _train(tmp_path, 2, "part", data, "--loss", "squared", "--max-iter", "7", "--checkpoint", ck)
    resumed, _, stdout = _train(tmp_path, 2, "resumed", data, "--loss", "squared", "--max-iter", "12",
                                "--checkpoint", ck, "--resume")
    assert "resum" in stdout.lower()
    np.testing.assert_array_equal(resumed, whole)


@pytest.mark.parametrize("options, env, message", [
    (("--dtype", "float64"), {"PGD_GPU_RESERVE_BYTES": str(1 << 50)},
     "pgd: error: rank 0: its 34 x 8 float64 slice needs 1048576.0 GiB on GPU 0 but only 8.0 GiB is free; use "
     "about 262145 ranks (more GPUs or nodes), --dtype float32, or --device cpu"),
    (("--comm", "nccl"), {}, "pgd: error: --comm nccl needs NCCL through CuPy, but cupy.cuda.nccl cannot be imported"),
])
def test_fake_gpu_errors_are_one_line_on_every_rank_together(datasets, options, env, message):
    result = run_pgd(2, "train", datasets["squared"], "--loss", "squared", "--device", "gpu", *options,
                     env=dict(FAKE_CUPY, **env), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pgd")]
    assert len(lines) == 1 and lines[0].startswith(message) and "Traceback" not in result.stderr


def test_fake_gpu_multinomial_with_validation_equals_cpu(tmp_path):
    """The multinomial gradient (two GEMMs per slab on the device), class weights and validation rows on the
    device path."""
    import h5py

    from support.files import write_dataset

    rng = np.random.default_rng(4)
    X = rng.standard_normal((70, 5)) * np.linspace(1, 4, 5)
    data = write_dataset(tmp_path / "m.h5", X, rng.integers(0, 4, 70).astype(float))
    common = (data, "--loss", "multinomial", "--dtype", "float64", "--l2", "0.01", "--class-weight", "balanced",
              "--validation-fraction", "0.3", "--validate-every", "2", "--max-iter", "15", "--tol", "0", "--rtol", "0")
    models = {}
    for device, env in (("cpu", None), ("gpu", FAKE_CUPY)):
        out = tmp_path / f"{device}.h5"
        result = run_pgd(2, "train", *common, "--device", device, "--out", out, env=env, timeout=240)
        assert result.returncode == 0, result.stderr
        with h5py.File(out, "r") as handle:
            models[device] = (handle["w"][...], handle["b"][...], dict(handle.attrs))
    (w_cpu, b_cpu, cpu), (w_gpu, b_gpu, gpu) = models["cpu"], models["gpu"]
    assert gpu["device"] == "gpu (cupy)" and w_gpu.shape == (5, 4)
    np.testing.assert_allclose(np.vstack([w_gpu, b_gpu]), np.vstack([w_cpu, b_cpu]), rtol=1e-10, atol=1e-10)
    found, expected = json.loads(gpu["validation_metrics"]), json.loads(cpu["validation_metrics"])
    assert found.keys() == expected.keys() and found["iteration"] == expected["iteration"] == 15
    np.testing.assert_allclose([found["val_loss"], found["val_accuracy"]],
                               [expected["val_loss"], expected["val_accuracy"]], rtol=1e-10)


def test_fake_gpu_multinomial_feature_mode_equals_cpu_data_mode(tmp_path):
    """The grid's multinomial path (scores over the row group, softmax residuals, the standardisation's K-vector
    shift) on the device path: ``--mode feature`` on the fake GPU equals data mode on the CPU."""
    import h5py

    from support.files import write_dataset

    rng = np.random.default_rng(6)
    X = rng.standard_normal((53, 5)) * np.linspace(1, 4, 5) + 1.0
    data = write_dataset(tmp_path / "m.h5", X, rng.integers(0, 3, 53).astype(float))
    common = (data, "--loss", "multinomial", "--dtype", "float64", "--l2", "0.01", "--class-weight", "balanced",
              "--max-iter", "15", "--tol", "0", "--rtol", "0")
    models = {}
    for device, mode, env in (("cpu", "data", None), ("gpu", "feature", FAKE_CUPY)):
        out = tmp_path / f"{device}.h5"
        result = run_pgd(2, "train", *common, "--device", device, "--mode", mode, "--out", out, env=env, timeout=240)
        assert result.returncode == 0, result.stderr
        with h5py.File(out, "r") as handle:
            models[device] = (np.vstack([handle["w"][...], handle["b"][...]]), dict(handle.attrs))
    (cpu, _), (gpu, attrs) = models["cpu"], models["gpu"]
    assert attrs["device"] == "gpu (cupy)" and "1x2 grid" in attrs["communicator"] and gpu.shape == (6, 3)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-10 * np.abs(cpu).max())
