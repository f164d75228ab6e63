import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from pgd.data import convert_file, generate_dataset, inspect_dataset, read_rows
from pgd.errors import InputError

SAMPLES = Path(__file__).resolve().parents[2] / "data"


def load(path):
    with h5py.File(path, "r") as h5:
        return h5["X"][()], h5["y"][()], dict(h5.attrs)


def test_generate_is_reproducible_and_independent_of_block_size(tmp_path):
    a = generate_dataset(tmp_path / "a.h5", "regression", 101, 5, seed=3)
    generate_dataset(tmp_path / "b.h5", "regression", 101, 5, seed=3, block_rows=7)
    generate_dataset(tmp_path / "c.h5", "regression", 101, 5, seed=4)
    xa, ya, _ = load(tmp_path / "a.h5")
    xb, yb, _ = load(tmp_path / "b.h5")
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(xa, load(tmp_path / "c.h5")[0])
    assert a["n"] == 101 and a["d"] == 5 and a["dtype"] == "float32"


def test_generate_layout_and_regression_signal(tmp_path):
    path = tmp_path / "reg.h5"
    generate_dataset(path, "regression", 4000, 8, seed=1, noise=0.2, chunk_rows=100, dtype="float64")
    meta = inspect_dataset(path)
    assert meta.chunks == (100, 8) and meta.dtype == np.float64 and meta.task == "regression"
    X, y, attrs = load(path)
    with h5py.File(path) as h5:
        assert h5["y"].chunks == (100,)
    assert attrs["pgd_format"] == 1 and attrs["generator"] == "pgd" and attrs["seed"] == 1
    residual = y - X @ attrs["true_w"] - attrs["true_b"]
    assert attrs["true_b"] == 0.5
    assert residual.std() == pytest.approx(0.2, rel=0.1)
    assert (X @ attrs["true_w"]).std() == pytest.approx(1.0, rel=0.5)


def test_generate_binary_labels_and_default_chunks(tmp_path):
    summary = generate_dataset(tmp_path / "bin.h5", "binary", 300, 4, seed=2)
    _, y, attrs = load(tmp_path / "bin.h5")
    assert set(np.unique(y)) == {0.0, 1.0} and attrs["task"] == "binary"
    assert summary["chunks"] == [300, 4]  # 1 MiB chunks clamped to n


def test_generate_large_d_stores_true_w(tmp_path):
    generate_dataset(tmp_path / "wide.h5", "regression", 3, 20000, seed=0)
    with h5py.File(tmp_path / "wide.h5") as h5:
        assert h5.attrs["true_w"].shape == (20000,)
        assert h5["X"].chunks == (3, 20000)


@pytest.mark.parametrize("args, fragment", [
    (("clustering", 10, 2), "task must be"),
    (("regression", 0, 2), "n and d must be >= 1"),
    (("regression", 10, 0), "n and d must be >= 1"),
])
def test_generate_rejects_bad_arguments(tmp_path, args, fragment):
    with pytest.raises(InputError, match=fragment):
        generate_dataset(tmp_path / "bad.h5", *args)
    with pytest.raises(InputError, match="float32 or float64"):
        generate_dataset(tmp_path / "bad.h5", "regression", 10, 2, dtype="int8")
    assert os.listdir(tmp_path) == []


def test_failed_generate_leaves_no_file(tmp_path, monkeypatch):
    import pgd.data.generate as generate

    def broken_create_xy(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate, "create_xy", broken_create_xy)
    with pytest.raises(RuntimeError):
        generate_dataset(tmp_path / "out.h5", "regression", 10, 2)
    assert os.listdir(tmp_path) == []


def sample_csv_values():
    return np.loadtxt(SAMPLES / "sample.csv", delimiter=",", skiprows=1)


@pytest.mark.parametrize("label_column", [None, "target", -1, 3, "3"])
def test_convert_csv_label_by_name_or_index(tmp_path, label_column):
    out = tmp_path / "csv.h5"
    summary = convert_file(SAMPLES / "sample.csv", out, "csv", label_column=label_column, block_rows=6)
    X, y, attrs = load(out)
    values = sample_csv_values().astype(np.float32)
    np.testing.assert_array_equal(X, values[:, :3])
    np.testing.assert_array_equal(y, values[:, 3])
    assert summary["n"] == 20 and attrs["task"] == "regression" and attrs["source_format"] == "csv"


def test_convert_csv_without_header_label_first(tmp_path):
    src = tmp_path / "plain.csv"
    src.write_text("1,2.5,3\n\n0,4,5e-1\n")
    convert_file(src, tmp_path / "out.h5", "csv", label_column=0, dtype="float64")
    X, y, attrs = load(tmp_path / "out.h5")
    np.testing.assert_array_equal(X, [[2.5, 3.0], [4.0, 0.5]])
    np.testing.assert_array_equal(y, [1.0, 0.0])
    assert attrs["task"] == "binary"


@pytest.mark.parametrize("text, kwargs, fragment", [
    ("a,b\n1,x\n", {}, "line 2 column 2: 'x' is not a number"),
    ("a,b\n1,2\n3\n", {}, "line 3: 1 columns, expected 2"),
    ("a,b\n1,2\n", {"label_column": "c"}, "label column 'c' not found"),
    ("a,b\n", {}, "has no data rows"),
    ("1,2\n3,4\n", {"label_column": 5}, "out of range"),
])
def test_convert_csv_errors(tmp_path, text, kwargs, fragment):
    src = tmp_path / "bad.csv"
    src.write_text(text)
    with pytest.raises(InputError, match=fragment):
        convert_file(src, tmp_path / "out.h5", "csv", **kwargs)
    assert not (tmp_path / "out.h5").exists()


def test_convert_npy_and_npz(tmp_path):
    data = np.arange(24, dtype=np.float64).reshape(8, 3) % 5
    np.save(tmp_path / "a.npy", data)
    convert_file(tmp_path / "a.npy", tmp_path / "a.h5", "npy", label_column=1, block_rows=3)
    X, y, _ = load(tmp_path / "a.h5")
    np.testing.assert_array_equal(X, data[:, [0, 2]])
    np.testing.assert_array_equal(y, data[:, 1])
    np.savez(tmp_path / "b.npz", X=data, y=np.array([0, 1] * 4))
    convert_file(tmp_path / "b.npz", tmp_path / "b.h5", "npy")
    X, y, attrs = load(tmp_path / "b.h5")
    np.testing.assert_array_equal(X, data)
    assert attrs["task"] == "binary"
    np.savez(tmp_path / "c.npz", X=data)
    with pytest.raises(InputError, match="lacks array"):
        convert_file(tmp_path / "c.npz", tmp_path / "c.h5", "npy")


def test_convert_libsvm_sample_pm1(tmp_path):
    summary = convert_file(SAMPLES / "sample.libsvm", tmp_path / "s.h5", "libsvm", labels="pm1", block_rows=4)
    X, y, attrs = load(tmp_path / "s.h5")
    assert summary["n"] == 20 and summary["d"] == 5 and attrs["task"] == "binary"
    assert set(np.unique(y)) == {0.0, 1.0}
    lines = [ln.split() for ln in (SAMPLES / "sample.libsvm").read_text().splitlines() if not ln.startswith("#")]
    np.testing.assert_array_equal(y, [1.0 if ln[0] == "+1" else 0.0 for ln in lines])
    expected = np.zeros((20, 5), np.float32)
    for i, ln in enumerate(lines):
        for token in ln[1:]:
            index, value = token.split(":")
            expected[i, int(index) - 1] = float(value)
    np.testing.assert_array_equal(X, expected)


def test_convert_libsvm_exact_values(tmp_path):
    src = tmp_path / "a.svm"
    src.write_text("# header\n2 qid:1 1:0.5 3:-1\n\n-3 2:4  # trailing\n")
    convert_file(src, tmp_path / "a.h5", "libsvm", n_features=4)
    X, y, attrs = load(tmp_path / "a.h5")
    np.testing.assert_array_equal(X, [[0.5, 0, -1, 0], [0, 4, 0, 0]])
    np.testing.assert_array_equal(y, [2, -3])
    assert attrs["task"] == "regression"
    convert_file(src, tmp_path / "z.h5", "libsvm", zero_based=True)
    np.testing.assert_array_equal(load(tmp_path / "z.h5")[0], [[0, 0.5, 0, -1], [0, 0, 4, 0]])


@pytest.mark.parametrize("text, kwargs, fragment", [
    ("1 0:1 2:3\n", {}, "line 1: feature index 0 is invalid; indices are 1-based unless you pass --zero-based"),
    ("1 1:1\n-1 7:3\n", {"n_features": 4}, "line 2: feature index 7 exceeds --n-features 4"),
    ("1 1:1\n0 2:3\n2 1:1\n", {"labels": "pm1"}, "2 labels in .* are not -1 or \\+1 \\(first: 0 on line 2\\)"),
    ("abc 1:1\n", {}, "line 1: label 'abc' is not a number"),
    ("1 1:x\n", {}, "bad feature '1:x'"),
    ("1 1:1\n", {"task": "binary", "labels": "asis", "n_features": 1}, None),
    ("2 1:1\n", {"task": "binary"}, "task binary needs labels 0/1"),
])
def test_convert_libsvm_errors(tmp_path, text, kwargs, fragment):
    src = tmp_path / "bad.svm"
    src.write_text(text)
    if fragment is None:
        convert_file(src, tmp_path / "out.h5", "libsvm", **kwargs)
        return
    with pytest.raises(InputError, match=fragment):
        convert_file(src, tmp_path / "out.h5", "libsvm", **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["bad.svm"]


@pytest.mark.parametrize("fmt", ["csv", "libsvm"])
def test_convert_of_a_binary_file_names_the_option_to_check(tmp_path, fmt):
    from pgd.cli.data import data_convert

    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(InputError, match="is not a text file; is --from right") as error:
        convert_file(src, tmp_path / "out.h5", fmt)
    option = str(error.value).rsplit(" ", 2)[-2]
    assert option in {name for param in data_convert.params for name in param.opts}


def test_convert_output_is_readable_by_read_rows(tmp_path):
    convert_file(SAMPLES / "sample.csv", tmp_path / "c.h5", "csv", chunk_rows=4)
    meta = inspect_dataset(tmp_path / "c.h5")
    assert meta.chunks == (4, 3)
    X, y = read_rows(meta, 5, 9, np.float64)
    np.testing.assert_array_equal(X, sample_csv_values()[5:9, :3].astype(np.float32))


def test_convert_rejects_bad_options(tmp_path):
    with pytest.raises(InputError, match="format must be"):
        convert_file(SAMPLES / "sample.csv", tmp_path / "o.h5", "parquet")
    with pytest.raises(InputError, match="source file not found"):
        convert_file(tmp_path / "none.csv", tmp_path / "o.h5", "csv")
    with pytest.raises(InputError, match="output directory does not exist"):
        convert_file(SAMPLES / "sample.csv", tmp_path / "nodir" / "o.h5", "csv")
