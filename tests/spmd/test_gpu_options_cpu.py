"""The GPU options on a CPU run: harmless, and the decision is reported (mpirun, 2 ranks)."""

import numpy as np
import pytest

from support.files import read_weights, write_dataset
from support.mpi import run_pgd


@pytest.mark.mpi
def test_cuda_aware_on_is_harmless_on_cpu_and_reported(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.25
    data = write_dataset(tmp_path / "d.h5", X, y)
    out = tmp_path / "m.h5"
    result = run_pgd(2, "train", data, "--loss", "squared", "--device", "cpu", "--cuda-aware", "on",
                     "--max-iter", "500", "--tol", "1e-9", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "MPI on device buffers: no GPU (data on the host (--cuda-aware on has no effect))" in result.stdout
    w, b, attrs = read_weights(out)
    np.testing.assert_allclose(w, [1.0, -2.0, 0.5], atol=1e-5)
    assert attrs["cuda_aware"].startswith("no GPU")

    info = run_pgd(2, "info", env={"PGD_CUDA_AWARE": "off"})
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    assert next(line for line in lines if line.startswith("cuda_aware")).split() == ["cuda_aware", "no", "GPU"]
    probe = next(line for line in lines if line.startswith("mpi_cuda_probe"))
    assert probe.split()[1] in ("CUDA-aware", "not", "unknown") and "(" in probe

    nccl = run_pgd(2, "train", data, "--loss", "squared", "--device", "cpu", "--comm", "nccl")
    assert nccl.returncode != 0
    assert "--comm nccl needs the GPU" in nccl.stderr and nccl.stderr.count("nccl needs") == 1


@pytest.mark.mpi
def test_device_communicators_over_real_mpi_with_a_fake_device():
    from support import script as support_script
    from support.mpi import run_python

    result = run_python(2, support_script("mpi_gpu_fake_check.py"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert "off StagedCommunicator host staging True" in lines
    assert "on DeviceCommunicator cuda-aware True" in lines       # confirmed by the checksum Allreduce
    # Open MPI from PyPI is not CUDA-aware: staging; an MPI whose probe says yes is confirmed by the checksum
    assert ("auto StagedCommunicator host staging True" in lines or "auto DeviceCommunicator cuda-aware True"
            in lines)
