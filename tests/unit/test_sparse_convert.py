"""SciPy .npz -> CSR, dense <-> CSR round trips, and the sparse benchmark generator (no MPI)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from pgd.data.csr import inspect_csr, scan_csr
from pgd.data.csr_slab import read_csr_slab
from pgd.data.generate import generate_dataset
from pgd.data.sparse_convert import convert_npz, csr_to_dense, dense_to_csr
from pgd.data.sparse_generate import generate_sparse
from pgd.errors import InputError


def _slab(path):
    meta = inspect_csr(path, require_y=False)
    return meta, read_csr_slab(meta, 0, meta.n)


@pytest.mark.parametrize("compressed", [True, False])
def test_npz_streams_into_csr(tmp_path, compressed):
    matrix = sp.random(500, 70, density=0.05, format="csr", random_state=0)
    y = (np.arange(500) % 2).astype(float)
    sp.save_npz(tmp_path / "m.npz", matrix, compressed=compressed)
    np.save(tmp_path / "y.npy", y)
    summary = convert_npz(tmp_path / "m.npz", tmp_path / "m.h5", labels=tmp_path / "y.npy", dtype="float64",
                          block_values=97)
    meta, slab = _slab(tmp_path / "m.h5")
    assert summary["task"] == "binary" and summary["nnz"] == matrix.nnz
    assert (slab.to_scipy() != matrix).nnz == 0 and np.array_equal(slab.y, y)


def test_npz_in_other_formats_and_without_labels(tmp_path):
    matrix = sp.random(50, 20, density=0.2, format="csr", random_state=1)
    sp.save_npz(tmp_path / "c.npz", matrix.tocsc())
    convert_npz(tmp_path / "c.npz", tmp_path / "c.h5", dtype="float64", index_dtype="int64")
    meta, slab = _slab(tmp_path / "c.h5")
    assert meta.y_key is None and meta.index_dtype == np.int64
    assert (slab.to_scipy() != matrix).nnz == 0


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "plain.npz", X=np.zeros((2, 2)))
    with pytest.raises(InputError, match="not a SciPy sparse .npz"):
        convert_npz(tmp_path / "plain.npz", tmp_path / "o.h5")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match="not an .npz"):
        convert_npz(tmp_path / "text.npz", tmp_path / "o.h5")
    sp.save_npz(tmp_path / "m.npz", sp.eye(3, format="csr"))
    with pytest.raises(InputError, match="labels must be 3 numbers"):
        convert_npz(tmp_path / "m.npz", tmp_path / "o.h5", labels=np.zeros(4))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_csr_dense_round_trip_is_exact(tmp_path, dtype):
    generate_dataset(tmp_path / "d.h5", "binary", 300, 17, seed=0, dtype=dtype)
    with h5py.File(tmp_path / "d.h5", "a") as h5:
        x = h5["X"][:]
        x[x < 0.4] = 0
        x[11] = 0  # an empty row
        h5["X"][:] = x
        h5["sample_weight"] = np.linspace(0.5, 2, 300)
    dense_to_csr(tmp_path / "d.h5", tmp_path / "s.h5", block_rows=29)
    meta, slab = _slab(tmp_path / "s.h5")
    assert meta.dtype == np.dtype(dtype) and slab.nnz == np.count_nonzero(x)
    assert np.array_equal(slab.to_scipy().toarray(), x) and meta.task == "binary"
    csr_to_dense(tmp_path / "s.h5", tmp_path / "back.h5", block_rows=31)
    with h5py.File(tmp_path / "d.h5") as a, h5py.File(tmp_path / "back.h5") as b:
        for key in ("X", "y", "sample_weight"):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key][:], b[key][:]), key
        assert b.attrs["task"] == "binary"


def test_generator_is_deterministic_whatever_the_block(tmp_path):
    a = generate_sparse(tmp_path / "a.h5", 700, 400, 12, seed=5, block_rows=33)
    b = generate_sparse(tmp_path / "b.h5", 700, 400, 12, seed=5)
    generate_sparse(tmp_path / "c.h5", 700, 400, 12, seed=6)
    assert {**a, "path": None} == {**b, "path": None} and a["nnz"] <= 700 * 12
    (_, sa), (_, sb), (_, sc) = _slab(tmp_path / "a.h5"), _slab(tmp_path / "b.h5"), _slab(tmp_path / "c.h5")
    for name in ("indptr", "indices", "data", "y"):
        assert np.array_equal(getattr(sa, name), getattr(sb, name))
    assert not np.array_equal(sa.y, sc.y) or not np.array_equal(sa.indices[:50], sc.indices[:50])
    assert set(np.unique(sa.y)) <= {0.0, 1.0}


def test_generator_power_law_and_rows(tmp_path):
    generate_sparse(tmp_path / "g.h5", 2000, 1000, 20, power=1.0, task="regression", seed=1, index_dtype="int64")
    meta, slab = _slab(tmp_path / "g.h5")
    info = scan_csr(meta)
    assert meta.index_dtype == np.int64 and info["row_nnz_max"] <= 20 and info["row_nnz_min"] >= 1
    counts = np.sort(np.bincount(slab.indices, minlength=1000))[::-1]
    assert counts[0] > 20 * counts[500]  # a few features are far more frequent than most
    norms = np.sqrt(slab.to_scipy().multiply(slab.to_scipy()).sum(axis=1))
    assert np.allclose(norms, 1, atol=1e-5)
    for indptr_row in range(5):  # sorted, distinct indices in each row
        row = slab.indices[slab.indptr[indptr_row]:slab.indptr[indptr_row + 1]]
        assert np.all(np.diff(row) > 0)
    with pytest.raises(InputError, match="nnz_per_row"):
        generate_sparse(tmp_path / "x.h5", 10, 5, 6)
