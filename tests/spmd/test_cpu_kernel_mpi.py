"""``pgd train`` on the compiled one-pass CPU kernel (PGD_CPU_KERNEL=fused) under mpirun: the same model as the
blocked BLAS path, every rank count, and the summary says which ran."""

from __future__ import annotations

import numpy as np
import pytest

from support.files import write_loss_datasets
from support.mpi import train_params

pytest.importorskip("numba")


def test_fused_kernel_trains_the_blocked_model(tmp_path):
    loss = "logistic"   # the squared loss through the same path: tests/unit/test_cpu_kernels.py
    data = write_loss_datasets(tmp_path, 400, 6, seed=11, intercept=0.5)[loss]
    args = (data, "--loss", loss, "--l2", "1e-3", "--dtype", "float64", "--solver", "iterative", "--tol", "1e-10")
    blocked, attrs, _ = train_params(1, tmp_path / "blocked.h5", *args, env={"PGD_CPU_KERNEL": "blocked"})
    assert "blocked" in attrs["gradient_kernel"]
    for ranks in (1, 3):
        params, attrs, stdout = train_params(ranks, tmp_path / f"fused{ranks}.h5", *args,
                                             env={"PGD_CPU_KERNEL": "fused"})
        assert "numba" in attrs["gradient_kernel"], attrs["gradient_kernel"]
        line = next(line for line in stdout.splitlines() if line.startswith("  gradient: "))   # what ran, and its cost
        assert "fused one-pass CPU kernel" in line and (" compiled " in line or "disk cache" in line), line
        np.testing.assert_allclose(params, blocked, rtol=1e-8, atol=1e-9)


def test_fused_multinomial_kernel_trains_the_blocked_model(tmp_path):
    """Multinomial (4 classes, sample weights through --class-weight) on the compiled kernel equals the
    blocked GEMM path, on 1 and 3 ranks, and the summary says which ran."""
    from support.files import write_dataset

    rng = np.random.default_rng(12)
    X = rng.standard_normal((500, 6)) * np.linspace(0.5, 4, 6)
    y = np.argmax(X[:, :4] + rng.standard_normal((500, 4)), axis=1).astype(float)
    data = write_dataset(tmp_path / "m.h5", X, y)
    args = (data, "--loss", "multinomial", "--l2", "1e-3", "--dtype", "float64", "--class-weight", "balanced",
            "--tol", "1e-10")
    blocked, attrs, _ = train_params(1, tmp_path / "blocked.h5", *args, env={"PGD_CPU_KERNEL": "blocked"})
    assert attrs["gradient_kernel"].startswith("blocked two-pass GEMM")
    for ranks in (1, 3):
        params, attrs, stdout = train_params(ranks, tmp_path / f"fused{ranks}.h5", *args,
                                             env={"PGD_CPU_KERNEL": "fused"})
        assert attrs["gradient_kernel"].startswith("fused one-pass CPU kernel (numba, dense, 4 classes")
        line = next(line for line in stdout.splitlines() if line.startswith("  gradient: "))
        assert " compiled " in line or "disk cache" in line, line
        np.testing.assert_allclose(params, blocked, rtol=1e-8, atol=1e-9)
