"""Optimizer and solver options on the command line: the refusals and what a run reports (moved from
tests/unit/test_optimizers.py, which runs without mpirun)."""

from __future__ import annotations

import numpy as np
import pytest

from support.files import write_dataset
from support.mpi import run_pgd


@pytest.mark.mpi
def test_cli_gram_solver_errors_for_logistic_and_sgd_reports_epochs(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3))
    path = write_dataset(tmp_path / "b.h5", X, (X[:, 0] > 0).astype(np.float64))
    done = run_pgd(1, "train", path, "--loss", "logistic", "--solver", "gram")
    assert done.returncode == 2 and "--solver gram needs --loss squared" in done.stderr + done.stdout
    done = run_pgd(2, "train", path, "--loss", "logistic", "--optimizer", "sgd", "--epochs", "3",
                   "--batch-size", "16", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "stopped after 12 iterations" in done.stdout and "sgd: 3 epochs of 4 steps" in done.stdout
