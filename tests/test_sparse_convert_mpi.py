"""Parallel LIBSVM -> CSR under mpirun: 1, 2 and 3 ranks write the same bytes as the serial conversion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file

from conftest import run_python
from pgd.data.libsvm_convert import convert_libsvm

SCRIPT = str(Path(__file__).with_name("spmd_sparse_convert_check.py"))


@pytest.mark.mpi
def test_ranks_write_identical_bytes(tmp_path):
    matrix = sp.random(3000, 200, density=0.02, format="csr", random_state=0)
    y = np.random.default_rng(0).integers(0, 2, 3000)
    src = tmp_path / "data.svm"
    dump_svmlight_file(matrix, y, str(src), zero_based=False)
    reference = tmp_path / "serial.h5"
    convert_libsvm(src, reference)
    for ranks in (1, 2, 3):
        out = tmp_path / f"out{ranks}.h5"
        result = run_python(ranks, SCRIPT, src, reference, out, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"ranks {ranks}: identical bytes True" in result.stdout
    leftovers = sorted(name for name in os.listdir(tmp_path) if name.startswith("."))
    assert leftovers == []
