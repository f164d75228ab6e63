"""Parallel LIBSVM -> CSR and CSV -> dense under mpirun: 1, 2 and 3 ranks write the same bytes as one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file

from pgd.data.libsvm_convert import convert_libsvm
from pgd.data.sparse_csv_convert import convert_csv_parallel
from support import script
from support.mpi import run_python

SCRIPT = script("mpi_sparse_convert_check.py")


def _sources(tmp_path):
    matrix = sp.random(3000, 200, density=0.02, format="csr", random_state=0)
    y = np.random.default_rng(0).integers(0, 2, 3000)
    svm, csv = tmp_path / "data.svm", tmp_path / "data.csv"
    dump_svmlight_file(matrix, y, str(svm), zero_based=False)
    dense = np.column_stack([matrix[:, :8].toarray(), y])
    np.savetxt(csv, dense, delimiter=",", fmt="%.8g", header="a,b,c,d,e,f,g,h,y", comments="")
    return {"libsvm": (svm, convert_libsvm), "csv": (csv, convert_csv_parallel)}


@pytest.mark.mpi
@pytest.mark.parametrize("fmt", ["libsvm", "csv"])
def test_ranks_write_identical_bytes(tmp_path, fmt):
    src, convert = _sources(tmp_path)[fmt]
    reference = tmp_path / "serial.h5"
    convert(src, reference)
    for ranks in (1, 2, 3):
        out = tmp_path / f"out{ranks}.h5"
        result = run_python(ranks, SCRIPT, src, reference, out, fmt, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"ranks {ranks}: identical bytes True" in result.stdout
    leftovers = sorted(name for name in os.listdir(tmp_path) if name.startswith("."))
    assert leftovers == []
