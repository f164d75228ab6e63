"""nnz-balanced row ranges (pure, and by bisection on the file) and slab reads, without MPI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from pgd.data.csr import inspect_csr
from pgd.data.csr_partition import csr_row_bounds, csr_row_range, csr_row_range_from_file
from pgd.data.csr_slab import rank_row_range, read_csr_slab, read_rank_slab
from pgd.data.csr_writer import csr_output


class CountingIndptr:
    """An indptr that counts element reads, to show bisection reads O(log n) of them."""

    def __init__(self, indptr):
        self.indptr, self.reads = np.asarray(indptr), 0
        self.shape = self.indptr.shape

    def __getitem__(self, i):
        self.reads += 1
        return self.indptr[i]


row_counts = st.lists(st.integers(0, 50), min_size=0, max_size=200)


def _indptr(counts):
    return np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))


@settings(max_examples=300, deadline=None)
@given(row_counts, st.integers(1, 12))
def test_ranges_cover_rows_in_order_and_balance_work(counts, size):
    indptr = _indptr(counts)
    n, nnz = len(counts), int(indptr[-1])
    bounds = csr_row_bounds(indptr, size)
    assert bounds[0] == 0 and bounds[-1] == n and np.all(np.diff(bounds) >= 0)
    work = [int(indptr[b] - indptr[a]) + (b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    biggest_row = max((c + 1 for c in counts), default=0)
    assert max(work) <= -(-(nnz + n) // size) + biggest_row  # at most one row beyond a fair share
    for rank in range(size):
        assert csr_row_range(indptr, size, rank) == (bounds[rank], bounds[rank + 1])
        counting = CountingIndptr(indptr)
        assert csr_row_range_from_file(counting, size, rank) == (bounds[rank], bounds[rank + 1])
        assert counting.reads <= 2 * (int(np.log2(n + 1)) + 2) + 1


def test_shapes_that_matter():
    assert csr_row_bounds([0], 3).tolist() == [0, 0, 0, 0]  # n = 0
    assert csr_row_bounds(np.zeros(7, dtype=np.int64), 3).tolist() == [0, 2, 4, 6]  # no values: rows split
    assert csr_row_bounds([0, 1000, 1001, 1002, 1003], 2).tolist() == [0, 1, 4]  # one huge row alone
    assert csr_row_bounds([0, 1, 2], 5).tolist() == [0, 0, 1, 1, 2, 2]  # more ranks than rows
    assert csr_row_bounds([0, 0, 0, 10, 10], 2).tolist() == [0, 3, 4]
    with pytest.raises(ValueError):
        csr_row_range([0, 1], 2, 2)
    with pytest.raises(ValueError):
        csr_row_bounds([0, 1], 0)


def _file(tmp_path, n=30, d=12, index_dtype=None):
    matrix = sp.random(n, d, density=0.3, format="csr", random_state=1)
    y, w = np.arange(n, dtype=np.float64), np.linspace(1, 2, n)
    path = tmp_path / "x.h5"
    with csr_output(path, d, "float64", weights=True, index_dtype=index_dtype) as writer:
        writer.append_csr(matrix, y, w)
    return path, matrix, y, w


def test_rank_ranges_from_the_file_match_the_pure_function(tmp_path):
    path, matrix, _, _ = _file(tmp_path)
    meta = inspect_csr(path)
    for size in (1, 2, 3, 7, 40):
        bounds = csr_row_bounds(matrix.indptr, size)
        assert [rank_row_range(meta, size, r) for r in range(size)] == list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_slabs_of_all_ranks_rebuild_the_matrix(tmp_path, index_dtype):
    path, matrix, y, w = _file(tmp_path, index_dtype=index_dtype)
    meta = inspect_csr(path)
    for size in (1, 2, 3, 40):
        slabs = [read_rank_slab(meta, size, r) for r in range(size)]
        for slab in slabs:
            assert slab.indptr[0] == 0 and slab.indptr.dtype == np.int64
            assert slab.indices.dtype == np.dtype(index_dtype)
            assert len(slab.y) == slab.n_rows == len(slab.sample_weight) == len(slab.indptr) - 1
        rebuilt = sp.vstack([s.to_scipy() for s in slabs]).tocsr()
        assert (rebuilt != matrix).nnz == 0
        assert np.array_equal(np.concatenate([s.y for s in slabs]), y)
        assert np.array_equal(np.concatenate([s.sample_weight for s in slabs]), w)


def test_a_rank_without_rows_gets_valid_empty_arrays(tmp_path):
    path, _, _, _ = _file(tmp_path)
    slab = read_csr_slab(inspect_csr(path), 30, 30, "float32")
    assert slab.n_rows == 0 and slab.nnz == 0 and slab.indptr.tolist() == [0]
    assert slab.data.dtype == np.float32 and slab.y.shape == (0,) and slab.sample_weight.shape == (0,)
    assert slab.to_scipy().shape == (0, 12)


def test_slab_conversions_and_bad_ranges(tmp_path):
    path, matrix, _, _ = _file(tmp_path)
    meta = inspect_csr(path)
    slab = read_csr_slab(meta, 5, 9, "float32", index_dtype="int64", weight_key=None)
    assert slab.data.dtype == np.float32 and slab.indices.dtype == np.int64 and slab.sample_weight is None
    assert np.allclose(slab.to_scipy().toarray(), matrix[5:9].toarray())
    with pytest.raises(ValueError):
        read_csr_slab(meta, 5, 31)
    with h5py.File(path, "a") as h5:
        h5["X/indices"][0] = 99
    with pytest.raises(Exception, match=r"fall outside \[0, 12\)"):
        read_csr_slab(inspect_csr(path), 0, 30)
