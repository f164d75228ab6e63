"""The compiled CSV fast path gives exactly what the csv-module path gives: values, labels, messages."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pgd.data import sparse_csv
from pgd.data.convert import convert_file
from pgd.errors import InputError

pytest.importorskip("numba")

CASES = {
    "header": "a,b,y\n1,2.5,0\n-3e2,4,1\n\n5, 6 ,1\n0.12345678901234567891,1e-320,0\n",
    "no header, crlf, blanks": "1,2,3\r\n4,5,6\r\n,,\r\n7,8,9\r\n",
    "pandas index": ",a,y\n0,1.5,1\n1,2.5,0\n",
    "semicolons, no final newline": "x;y\n1;2\n3;4",
    "nan and inf": "a,y\nnan,1\ninf,0\n-Infinity,1\n",
    "underscore (python float only)": "a,y\n1_0,1\n2,0\n",
    "quotes": 'a,y\n"1",0\n2,1\n',
}


def _both(tmp_path, monkeypatch, text, **options):
    src = tmp_path / "data.csv"
    src.write_text(text)
    monkeypatch.setattr(sparse_csv, "BLOCK_BYTES", 7)  # many blocks, lines longer than a block
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(sparse_csv, "_kernels", lambda: None)
        out = tmp_path / f"{fast}.h5"
        try:
            summary = convert_file(src, out, "csv", dtype="float64", **options)
        except InputError as error:
            results.append(("error", str(error)))
            continue
        with h5py.File(out) as h5:
            results.append((summary["n"], summary["d"], h5["X"][:], h5["y"][:] if "y" in h5 else None))
    return results


def _equal(a, b):
    if a[0] == "error" or b[0] == "error":
        return a == b
    return a[:2] == b[:2] and np.array_equal(a[2], b[2], equal_nan=True) and (
        (a[3] is None and b[3] is None) or np.array_equal(a[3], b[3], equal_nan=True))


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_equals_the_csv_path(tmp_path, monkeypatch, name):
    fast, slow = _both(tmp_path, monkeypatch, CASES[name])
    assert fast[0] != "error" and _equal(fast, slow)


@pytest.mark.parametrize("text, message", [
    ("a,y\n1,0\n2,1\n3\n", "line 4: 1 columns, expected 2"),
    ("a,y\n1,0\n" + "2,1\n" * 20 + "x,1\n", "line 23 column 1: 'x' is not a number"),
    ("a,y\n1,yes\n", "'yes' is not a number; it is the label column"),
])
def test_errors_are_the_csv_paths(tmp_path, monkeypatch, text, message):
    fast, slow = _both(tmp_path, monkeypatch, text)
    assert fast == slow and fast[0] == "error" and message in fast[1]


def test_labels_pm1_and_label_column(tmp_path, monkeypatch):
    text = "y,a,b\n-1,1,2\n1,3,4\n"
    fast, slow = _both(tmp_path, monkeypatch, text, label_column="y", labels="pm1")
    assert _equal(fast, slow) and fast[3].tolist() == [0, 1]
    fast, slow = _both(tmp_path, monkeypatch, text, label_column="none")
    assert _equal(fast, slow) and fast[3] is None and fast[1] == 3


def test_the_fast_path_is_taken_for_plain_numbers_only(tmp_path):
    plain, quoted = tmp_path / "plain.csv", tmp_path / "quoted.csv"
    plain.write_text("a,y\n1,0\n2,1\n\n")
    quoted.write_text('a,y\n"1",0\n')
    rows, blocks = sparse_csv.fast_csv_blocks(str(plain), ",", True, 2)
    values, lines = next(blocks)
    assert rows == 2 and values.tolist() == [[1, 0], [2, 1]] and lines.tolist() == [2, 3]
    assert sparse_csv.fast_csv_blocks(str(quoted), ",", True, 2) is None


@pytest.mark.parametrize("size", [1, 2, 3])
def test_parallel_csv_equals_the_serial_converter_and_ranks_agree(tmp_path, size):
    from test_sparse_libsvm import run_ranks

    from pgd.data.sparse_csv_convert import convert_csv_parallel
    rng = np.random.default_rng(0)
    lines = ["a,b,c,y"] + [f"{x:.6g},{z:.17g},{i},{i % 2}" for i, (x, z) in enumerate(rng.standard_normal((500, 2)))]
    lines[100] = ""  # a blank line
    lines[300] = '"7",1,2,1'  # a block for the csv module
    src = tmp_path / "data.csv"
    src.write_text("\n".join(lines) + "\n")
    serial = convert_file(src, tmp_path / "serial.h5", "csv", dtype="float64")
    out = tmp_path / f"par{size}.h5"
    results = run_ranks(size, lambda group: convert_csv_parallel(src, out, dtype="float64", block_bytes=333,
                                                                 collective=group))
    assert all(not isinstance(r, Exception) for r in results), results
    assert all(r == results[0] for r in results) and results[0]["n"] == serial["n"] == 499
    with h5py.File(tmp_path / "serial.h5") as a, h5py.File(out) as b:
        assert np.array_equal(a["X"][:], b["X"][:]) and np.array_equal(a["y"][:], b["y"][:])
        assert b.attrs["task"] == "binary"
    reference = tmp_path / "one.h5"
    run_ranks(1, lambda group: convert_csv_parallel(src, reference, dtype="float64", collective=group))
    assert out.read_bytes() == reference.read_bytes()


def test_parallel_csv_errors_name_the_line_on_every_rank(tmp_path):
    from test_sparse_libsvm import run_ranks

    from pgd.data.sparse_csv_convert import convert_csv_parallel
    src = tmp_path / "data.csv"
    src.write_text("a,y\n" + "".join(f"{i},1\n" for i in range(200)) + "x,1\n" + "1,0\n" * 50)
    results = run_ranks(3, lambda group: convert_csv_parallel(src, tmp_path / "o.h5", block_bytes=100,
                                                              collective=group))
    assert all(isinstance(r, InputError) and "line 202 column 1: 'x' is not a number" in str(r) for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
