"""The CSR dataset format: writer, inspection, full validation, anndata compatibility (no MPI)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from pgd.data.csr import format_csr_info, inspect_csr, is_csr_file, scan_csr
from pgd.data.csr_slab import read_csr_slab
from pgd.data.csr_writer import CsrWriter, csr_output
from pgd.errors import InputError


def _matrix(n=40, d=25, density=0.15, seed=0):
    matrix = sp.random(n, d, density=density, format="lil", random_state=seed, dtype=np.float64)
    matrix[3] = 0  # an empty row
    matrix = matrix.tocsr()
    matrix.eliminate_zeros()
    return matrix


def _write(path, matrix, y=None, blocks=(0, 17, 40), **options):
    with csr_output(path, matrix.shape[1], options.pop("dtype", "float64"), labels=y is not None, **options) as w:
        for lo, hi in zip(blocks[:-1], blocks[1:]):
            w.append_csr(matrix[lo:hi], None if y is None else y[lo:hi])
    return w.summary


def test_written_file_is_anndata_csr_and_reads_back(tmp_path):
    matrix, y = _matrix(), np.arange(40.0)
    path = tmp_path / "x.h5"
    summary = _write(path, matrix, y)
    assert summary == {"n": 40, "d": 25, "nnz": matrix.nnz, "dtype": "float64", "index_dtype": "int32"}
    with h5py.File(path) as h5:
        group = h5["X"]
        assert group.attrs["encoding-type"] == "csr_matrix" and group.attrs["encoding-version"] == "0.1.0"
        assert list(group.attrs["shape"]) == [40, 25]
        assert group["indptr"].dtype == np.int64 and group["indices"].dtype == np.int32
        assert h5.attrs["pgd_format"] == 1
    assert is_csr_file(path)
    meta = inspect_csr(path)
    slab = read_csr_slab(meta, 0, meta.n)
    assert (slab.to_scipy() != matrix).nnz == 0 and np.array_equal(slab.y, y)


def test_fixed_size_writer_bytes_do_not_depend_on_blocks(tmp_path):
    matrix, y = _matrix(), np.arange(40.0)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _write(a, matrix, y, blocks=(0, 40), n=40, nnz=matrix.nnz)
    _write(b, matrix, y, blocks=(0, 1, 3, 4, 39, 40), n=40, nnz=matrix.nnz)
    assert a.read_bytes() == b.read_bytes()


def test_int64_indices_on_small_data(tmp_path):
    matrix = _matrix()
    path = tmp_path / "x.h5"
    _write(path, matrix, index_dtype="int64")
    meta = inspect_csr(path, require_y=False)
    assert meta.index_dtype == np.int64
    assert (read_csr_slab(meta, 0, 40).to_scipy() != matrix).nnz == 0


def test_scan_reports_row_statistics(tmp_path):
    matrix = _matrix()
    path = tmp_path / "x.h5"
    _write(path, matrix, np.zeros(40))
    info = scan_csr(inspect_csr(path), block=7)
    counts = np.diff(matrix.indptr)
    assert (info["nnz"], info["row_nnz_min"], info["row_nnz_max"], info["empty_rows"]) == (
        matrix.nnz, counts.min(), counts.max(), int((counts == 0).sum()))
    assert info["row_nnz_mean"] == pytest.approx(counts.mean())
    assert info["density"] == pytest.approx(matrix.nnz / (40 * 25))
    assert info["index_bits"] == 32
    assert "non-zeros per row: min 0" in format_csr_info(info)


def test_anndata_reads_our_file(tmp_path):
    anndata = pytest.importorskip("anndata")
    read_elem = getattr(getattr(anndata, "io", None), "read_elem", None) or anndata.experimental.read_elem
    matrix = _matrix()
    for index_dtype in ("int32", "int64"):
        path = tmp_path / f"x{index_dtype}.h5"
        _write(path, matrix, dtype="float32", index_dtype=index_dtype)
        with h5py.File(path) as h5:
            read = read_elem(h5["X"])
        assert sp.issparse(read) and read.shape == (40, 25)
        assert (read != matrix.astype(np.float32)).nnz == 0


def _corrupt(path, edit):
    with h5py.File(path, "a") as h5:
        edit(h5["X"])


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.attrs.__setitem__("shape", np.array([41, 25])), r"indptr has 41 entries; shape \(41, 25\) needs 42"),
    (lambda g: g["indptr"].__setitem__(0, 1), "must start at 0"),
    (lambda g: g["indptr"].__setitem__(40, 5), "indptr ends at 5"),
    (lambda g: g.attrs.__delitem__("encoding-type"), "is not a csr_matrix group"),
    (lambda g: g.attrs.__delitem__("shape"), "without a valid 'shape'"),
])
def test_inspect_errors_are_one_line(tmp_path, edit, message):
    path = tmp_path / "x.h5"
    _write(path, _matrix(), np.zeros(40))
    _corrupt(path, edit)
    with pytest.raises(InputError, match=message) as error:
        inspect_csr(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["indptr"].__setitem__(10, 0), r"indptr decreases at row \d+"),
    (lambda g: g["indices"].__setitem__(2, 25), r"indices\[2\] = 25 is outside \[0, 25\)"),
    (lambda g: g["indices"].__setitem__(5, -1), r"indices\[5\] = -1 is outside"),
])
def test_scan_finds_deep_defects(tmp_path, edit, message):
    path = tmp_path / "x.h5"
    _write(path, _matrix(), np.zeros(40))
    meta = inspect_csr(path)
    _corrupt(path, edit)
    with pytest.raises(InputError, match=message):
        scan_csr(meta, block=8)


def test_labels_of_wrong_length_and_no_rows(tmp_path):
    path = tmp_path / "x.h5"
    _write(path, _matrix(), np.zeros(40))
    with h5py.File(path, "a") as h5:
        del h5["y"]
        h5["y"] = np.zeros(39)
    with pytest.raises(InputError, match="39 labels but /X has 40 rows"):
        inspect_csr(path)
    empty = tmp_path / "empty.h5"
    with csr_output(empty, 5, labels=False):
        pass
    with pytest.raises(InputError, match="has no rows"):
        inspect_csr(empty, require_y=False)


def test_writer_refuses_bad_indices_and_leaves_no_file(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(InputError, match="feature index 5 is outside"):
        with csr_output(path, 5, labels=False) as writer:
            writer.append([2], [1, 5], [1.0, 2.0])
    assert not os.path.exists(path) and os.listdir(tmp_path) == []


def test_fixed_writer_checks_counts(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        writer = CsrWriter(h5, 4, n=2, nnz=3, labels=False)
        writer.append([1], [0], [1.0])
        with pytest.raises(ValueError, match="announced 2 rows"):
            writer.finish()
