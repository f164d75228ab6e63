import h5py
import numpy as np
import pytest

from pgd.data import (
    combine_descriptions,
    count_nonfinite,
    describe_dataset,
    format_description,
    inspect_dataset,
    iter_row_blocks,
    open_h5,
    read_rows,
)
from pgd.errors import InputError


def write_h5(path, **datasets):
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            if isinstance(value, dict):
                h5.create_group(key)
            else:
                h5.create_dataset(key, data=value)
    return str(path)


@pytest.fixture
def good(tmp_path):
    X = np.arange(7 * 3, dtype=np.float64).reshape(7, 3)
    return write_h5(tmp_path / "good.h5", X=X, y=np.arange(7, dtype=np.int32)), X


def test_inspect_good_file(good):
    path, X = good
    meta = inspect_dataset(path)
    assert (meta.n, meta.d, meta.dtype, meta.y_dtype) == (7, 3, np.float64, np.int32)
    assert meta.nbytes_per_row == 3 * 8 + 4


@pytest.mark.parametrize("datasets, kwargs, fragment", [
    ({"y": np.zeros(3)}, {}, "no key 'X' (keys in the file: y)"),
    ({"X": np.zeros((3, 2))}, {}, "no key 'y' (keys in the file: X)"),
    ({"X": {}, "y": np.zeros(3)}, {}, "/X is a group"),
    ({"X": np.zeros(3), "y": np.zeros(3)}, {}, "must be 2-D"),
    ({"X": np.zeros((3, 2)), "y": np.zeros((3, 2))}, {}, "must be 1-D"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(4)}, {}, "has 4 labels but /X has 3 rows"),
    ({"X": np.zeros((3, 2), complex), "y": np.zeros(3)}, {}, "not real numeric"),
    ({"X": np.zeros((3, 2)), "y": np.array([b"a", b"b", b"c"])}, {}, "/y has dtype"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0)}, {}, "has no rows"),
    ({"X": np.zeros((3, 0)), "y": np.zeros(3)}, {}, "has no columns"),
    ({"A": np.zeros((3, 2))}, {"x_key": "B"}, "no key 'B'"),
])
def test_inspect_rejects_bad_files(tmp_path, datasets, kwargs, fragment):
    path = write_h5(tmp_path / "bad.h5", **datasets)
    with pytest.raises(InputError) as info:
        inspect_dataset(path, **kwargs)
    assert fragment in str(info.value)


def test_inspect_without_labels(tmp_path):
    path = write_h5(tmp_path / "nolabels.h5", X=np.ones((2, 2), dtype=bool))
    assert inspect_dataset(path, require_y=False).y_key is None
    assert inspect_dataset(path, y_key=None).y_key is None


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(InputError, match="data file not found"):
        inspect_dataset(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        inspect_dataset(tmp_path / "text.h5")
    with pytest.raises(InputError, match="locking"):
        with open_h5(tmp_path / "text.h5", locking="maybe"):
            pass


@pytest.mark.parametrize("locking", ["true", "false", "best-effort"])
def test_open_h5_locking_modes(good, locking):
    with open_h5(good[0], locking=locking) as h5:
        assert h5.mode == "r"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("start, stop", [(0, 7), (1, 6), (2, 3), (4, 4)])
def test_read_rows_round_trip(good, dtype, start, stop):
    path, X = good
    meta = inspect_dataset(path)
    x_slab, y_slab = read_rows(meta, start, stop, dtype, block_rows=3)
    assert x_slab.dtype == dtype and x_slab.flags.c_contiguous and x_slab.shape == (stop - start, 3)
    np.testing.assert_array_equal(x_slab, X[start:stop])
    np.testing.assert_array_equal(y_slab, np.arange(start, stop))


def test_read_rows_into_given_buffers(good):
    path, X = good
    meta = inspect_dataset(path)
    x_out, y_out = np.empty((5, 3)), np.empty(5)
    x_slab, y_slab = read_rows(meta, 2, 7, np.float64, x_out=x_out, y_out=y_out)
    assert x_slab is x_out and y_slab is y_out
    np.testing.assert_array_equal(x_out, X[2:])
    with pytest.raises(ValueError):
        read_rows(meta, 0, 7, np.float64, x_out=np.empty((5, 3)))


def test_iter_row_blocks(good):
    path, X = good
    blocks = list(iter_row_blocks(inspect_dataset(path), 1, 7, 4, dtype=np.float32))
    assert [offset for offset, _, _ in blocks] == [1, 5]
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in blocks]), X[1:])


def test_count_nonfinite():
    X = np.zeros((10, 4))
    y = np.zeros(10)
    assert count_nonfinite(X, y) == (0, -1)
    X[7, 1], X[7, 2], X[9, 0] = np.nan, np.inf, -np.inf
    y[5] = np.nan
    assert count_nonfinite(X, y) == (4, 5)
    assert count_nonfinite(X, None) == (3, 7)
    assert count_nonfinite(np.zeros((3, 2), dtype=np.int64), np.arange(3)) == (0, -1)


@pytest.fixture
def with_nans(tmp_path):
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.arange(30) % 3 - 1.0
    X[11, 2] = np.nan
    X[25, 0] = np.inf
    y[17] = np.nan
    return write_h5(tmp_path / "nans.h5", X=X, y=y)


def test_describe_finds_nonfinite_and_labels(with_nans):
    desc = describe_dataset(with_nans, block_rows=7)
    assert (desc["n"], desc["d"], desc["non_finite"], desc["first_non_finite_row"]) == (30, 4, 3, 11)
    labels = desc["labels"]
    assert labels["values"] == [-1.0, 0.0, 1.0] and labels["n_unique"] == 3 and labels["count"] == 29
    assert not labels["is_binary01"] and not labels["is_pm1"]
    text = format_description(desc)
    assert "30 x 4" in text and "3 non-finite" in text and "row 11" in text


def test_combine_descriptions_equals_whole_file(with_nans):
    whole = describe_dataset(with_nans)
    parts = [describe_dataset(with_nans, start=a, stop=b, block_rows=4) for a, b in [(0, 10), (10, 20), (20, 30)]]
    combined = combine_descriptions(parts)
    assert combined["labels"].pop("mean") == pytest.approx(whole["labels"].pop("mean"))
    assert combined == whole


def test_describe_without_scan_and_many_label_values(tmp_path):
    path = write_h5(tmp_path / "many.h5", X=np.zeros((40, 2)), y=np.arange(40.0))
    assert "non_finite" not in describe_dataset(path, scan=False)
    labels = describe_dataset(path)["labels"]
    assert labels["n_unique"] == ">20" and labels["values"] is None and labels["max"] == 39
