"""Inputs users have: CSV without labels, with a pandas index, text labels, other delimiters, multiclass-looking
labels; LIBSVM feature counts; the memory check; fingerprints of every loaded byte; temporary outputs."""

from __future__ import annotations

import json
import os
import zlib

import h5py
import numpy as np
import pytest

from pgd.data import convert_file
from pgd.data.fingerprint import array_crc, combine_parts, crc32_combine
from pgd.errors import InputError
from pgd.fileio import PendingFile, atomic_path
from pgd.runtime.hostmem import cgroup_available, check_fits_in_memory, meminfo_available
from support.files import write_dataset
from support.inprocess import run_main


def _load(path):
    with h5py.File(path) as handle:
        return handle["X"][...], (handle["y"][...] if "y" in handle else None), dict(handle.attrs)


def test_csv_without_labels_and_with_a_pandas_index(tmp_path):
    src = tmp_path / "f.csv"
    src.write_text(",a,b,c\n0,1,2,3\n1,4,5,6\n")
    summary = convert_file(src, tmp_path / "all.h5", "csv", label_column="none")
    X, y, _ = _load(tmp_path / "all.h5")
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
    assert y is None and summary["d"] == 3
    assert summary["notes"] == ["column 1 has no name (the index column pandas writes): it is left out"]
    summary = convert_file(src, tmp_path / "last.h5", "csv")  # by default the last column is the label: said
    assert "label column: 'c' (the last); --label-column picks another" in summary["notes"][1]


def test_text_labels_are_mapped_on_request_and_stored(tmp_path):
    src = tmp_path / "cancer.csv"
    src.write_text("radius,diagnosis\n1.5,malignant\n1.0,benign\n3.0,malignant\n")
    with pytest.raises(InputError, match="line 2 column 2: 'malignant' is not a number; it is the label column: "
                                         "--labels classes maps the classes to 0 .. K-1"):
        convert_file(src, tmp_path / "c.h5", "csv")
    summary = convert_file(src, tmp_path / "c.h5", "csv", labels="classes")
    _, y, attrs = _load(tmp_path / "c.h5")
    np.testing.assert_array_equal(y, [1, 0, 1])
    assert list(attrs["label_classes"]) == ["benign", "malignant"] and attrs["task"] == "binary"
    assert "labels mapped: 'benign' -> 0, 'malignant' -> 1" in summary["notes"][-1]
    src.write_text("x,kind\n1,b\n2,c\n3,a\n")   # K classes for --loss multinomial, the names kept
    summary = convert_file(src, tmp_path / "c3.h5", "csv", labels="classes")
    _, y, attrs = _load(tmp_path / "c3.h5")
    np.testing.assert_array_equal(y, [1, 2, 0])
    assert list(attrs["label_classes"]) == ["a", "b", "c"]
    assert "'a' -> 0, 'b' -> 1, 'c' -> 2 (stored as the attribute label_classes; train with --loss multinomial)" \
        in summary["notes"][-1]
    with h5py.File(tmp_path / "c3.h5", "r") as handle:   # the header's feature names are kept
        assert [name.decode() for name in handle["feature_names"][...]] == ["x"]
    src.write_text("x,kind\n1,a\n2,a\n")
    with pytest.raises(InputError, match="needs at least two classes but .* has 1"):
        convert_file(src, tmp_path / "c1.h5", "csv", labels="classes")
    svm = tmp_path / "b.svm"
    svm.write_text("2 1:1\n4 1:2\n2 1:3\n")  # the breast-cancer LIBSVM convention: 2 and 4
    convert_file(svm, tmp_path / "b.h5", "libsvm", labels="classes")
    assert list(_load(tmp_path / "b.h5")[1]) == [0, 1, 0]


@pytest.mark.parametrize("text, delimiter, note", [
    ("a;b;c\n1;2;3\n4;5;6\n", "auto", "delimiter ';' detected"),
    ("a\tb\tc\n1\t2\t3\n4\t5\t6\n", "\\t", None),
    ("a\tb\tc\n1\t2\t3\n4\t5\t6\n", "tab", None),
    ("a|b|c\n1|2|3\n4|5|6\n", "auto", "delimiter '|' detected"),
])
def test_delimiters(tmp_path, text, delimiter, note):
    src = tmp_path / "d.csv"
    src.write_text(text)
    summary = convert_file(src, tmp_path / "d.h5", "csv", delimiter=delimiter)
    X, y, _ = _load(tmp_path / "d.h5")
    np.testing.assert_array_equal(X, [[1, 2], [4, 5]])
    np.testing.assert_array_equal(y, [3, 6])
    assert (note is None) == (not any("delimiter" in n for n in summary["notes"]))
    with pytest.raises(InputError, match="--delimiter must be one character"):
        convert_file(src, tmp_path / "e.h5", "csv", delimiter="::")


def test_integer_labels_that_look_like_classes_are_noted(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "digits.npy", np.column_stack([rng.standard_normal((50, 2)), np.arange(50) % 10]))
    summary = convert_file(tmp_path / "digits.npy", tmp_path / "digits.h5", "npy")
    assert any("10 distinct integers (0 ... 9): this looks like a multiclass task" in n for n in summary["notes"])
    np.save(tmp_path / "real.npy", np.column_stack([rng.standard_normal((50, 2)), rng.standard_normal(50)]))
    summary = convert_file(tmp_path / "real.npy", tmp_path / "real.h5", "npy")
    assert not any("multiclass" in n for n in summary["notes"])


def test_libsvm_feature_count_is_stored_and_suggested(tmp_path, monkeypatch, capsys):
    (tmp_path / "train.svm").write_text("1 1:1 3:2\n0 2:1\n1 1:2 3:1\n0 2:2\n")
    (tmp_path / "test.svm").write_text("1 1:1\n0 2:1\n")  # feature 3 never occurs
    convert_file(tmp_path / "train.svm", tmp_path / "train.h5", "libsvm")
    summary = convert_file(tmp_path / "test.svm", tmp_path / "test.h5", "libsvm")
    assert _load(tmp_path / "test.h5")[2]["n_features_from"] == "largest index in the file"
    assert "2 features (the largest index in the file); --n-features sets the count" in summary["notes"][0]
    code, _, err = run_main(monkeypatch, capsys, "train", tmp_path / "train.h5", "--loss", "logistic",
                            "--max-iter", "3", "--quiet", "--out", tmp_path / "m.h5")
    assert code == 0, err
    code, _, err = run_main(monkeypatch, capsys, "evaluate", tmp_path / "m.h5", tmp_path / "test.h5")
    assert code == 2 and "convert it again with --n-features 3" in err
    convert_file(tmp_path / "test.svm", tmp_path / "test3.h5", "libsvm", n_features=3)
    assert _load(tmp_path / "test3.h5")[2]["n_features_from"] == "--n-features"
    code, out, err = run_main(monkeypatch, capsys, "evaluate", tmp_path / "m.h5", tmp_path / "test3.h5")
    assert code == 0, err


def test_memory_sources_and_the_check(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    assert meminfo_available(str(tmp_path / "meminfo")) == 2 << 20
    root = tmp_path / "cg"
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "memory.max").write_text("1000000\n")
    (root / "job" / "memory.current").write_text("600000\n")
    (root / "job" / "memory.stat").write_text("anon 1\ninactive_file 100000\n")
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "step" / "memory.current").write_text("5\n")
    (tmp_path / "cgroup2").write_text("0::/job/step\n")
    assert cgroup_available(str(tmp_path / "cgroup2"), str(root)) == 500000  # 1e6 - (6e5 - 1e5 cache)
    v1 = tmp_path / "v1" / "memory" / "slurm"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("4096\n")
    (v1 / "memory.usage_in_bytes").write_text("1024\n")
    (tmp_path / "cgroup1").write_text("9:cpu:/\n4:memory:/slurm\n")
    assert cgroup_available(str(tmp_path / "cgroup1"), str(tmp_path / "v1")) == 3072
    assert cgroup_available(str(tmp_path / "missing"), str(root)) is None
    check_fits_in_memory(rank=0, rows=10, d=10, dtype="float64", available=None, ranks_here=2, ranks=2)
    check_fits_in_memory(rank=0, rows=10, d=10, dtype="float64", available=2 * 10 * 13 * 8, ranks_here=2, ranks=2)
    with pytest.raises(InputError, match=r"rank 1: its 10 x 10 float64 rows need 1.0 KiB of memory but about "
                                         r"519 B is available to it \(1.0 KiB free on its node, shared by 2 "
                                         r"rank\(s\)\); use about 5 ranks on more nodes, or --dtype float32"):
        check_fits_in_memory(rank=1, rows=10, d=10, dtype="float64", available=1039, ranks_here=2, ranks=2)
    # a CSR slab: values, indices, row pointer, labels and two work vectors (20*12 + 88 + 240 = 568 bytes)
    check_fits_in_memory(rank=0, rows=10, d=10**9, dtype="float64", available=2 * 568, ranks_here=2, ranks=2,
                         nnz=20, index_itemsize=4)
    with pytest.raises(InputError, match=r"rank 0: its 10 x 1000000000 float64 rows \(20 non-zeros\) need 568 B"):
        check_fits_in_memory(rank=0, rows=10, d=10**9, dtype="float64", available=2 * 567, ranks_here=2, ranks=2,
                             nnz=20, index_itemsize=4)


def test_crc_parts_combine_to_the_whole():
    data = np.random.default_rng(1).standard_normal((101, 7))
    for cuts in ([0, 101], [0, 50, 101], [0, 1, 33, 33, 100, 101]):
        parts = [array_crc(data[a:b]) for a, b in zip(cuts, cuts[1:])]
        assert combine_parts(parts) == (zlib.crc32(data.tobytes()), data.nbytes)
    assert crc32_combine((5, 3), (0, 0)) == (5, 3)
    assert array_crc(None) == (0, 0)


def test_a_checkpoint_of_other_data_with_the_same_shape_is_refused(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5000, 3))
    y = (X[:, 0] > 0).astype(float)
    first = write_dataset(tmp_path / "a.h5", X, y)
    X[2500, 1] += 1e-9  # one value in the middle, far from any sampled block
    second = write_dataset(tmp_path / "b.h5", X, y)
    ck = tmp_path / "ck.h5"
    args = ["--loss", "logistic", "--max-iter", "2", "--quiet", "--checkpoint", ck, "--checkpoint-every", "1"]
    assert run_main(monkeypatch, capsys, "train", first, *args)[0] == 0
    code, _, err = run_main(monkeypatch, capsys, "train", second, *args, "--resume")
    assert code == 2 and "was written for different data than" in err and "(x_crc32 differ)" in err
    with h5py.File(ck, "r") as handle:
        fingerprint = json.loads(handle.attrs["fingerprint"])
    with h5py.File(first, "r") as handle:
        assert fingerprint["x_crc32"] == f"{zlib.crc32(handle['X'][...].tobytes()):08x}"  # the whole file's
    assert fingerprint["layout"] == "rows" and fingerprint["x_shape"] == [5000, 3]


@pytest.mark.parametrize("unnamed", [True, False])
def test_temporary_outputs_leave_nothing_behind(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(PendingFile, "_unnamed", lambda self: (_ for _ in ()).throw(OSError("no O_TMPFILE")))
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as temporary, open(temporary, "w") as handle:
            handle.write("new")
            assert sorted(os.listdir(tmp_path)) == (["out.txt"] if unnamed else sorted(os.listdir(tmp_path)))
            raise RuntimeError("crash while writing")
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "old"
    with atomic_path(str(target)) as temporary, open(temporary, "w") as handle:
        handle.write("new")
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "new"
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
