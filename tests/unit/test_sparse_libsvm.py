"""LIBSVM / SVMlight parsing and conversion (no MPI: several ranks are simulated with threads)."""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import dump_svmlight_file, load_svmlight_file

from pgd.data.csr import inspect_csr
from pgd.data.csr_slab import read_csr_slab
from pgd.data.libsvm_convert import Collective, convert_libsvm, line_aligned_range
from pgd.data.libsvm_parse import LibsvmSyntaxError, numba_kernel, parse_libsvm_block
from pgd.errors import InputError

ENGINES = ["numpy"] + (["numba"] if numba_kernel() is not None else [])
FIELDS = ("labels", "row_nnz", "row_line", "indices", "values")


def run_ranks(size: int, function):
    """Run ``function(collective)`` on ``size`` threads that share an allgather; returns each rank's
    result or exception."""
    barrier, slots, results = threading.Barrier(size), [None] * size, [None] * size

    def allgather_for(rank):
        def allgather(obj):
            slots[rank] = obj
            barrier.wait()
            gathered = list(slots)
            barrier.wait()
            return gathered
        return allgather

    def body(rank):
        try:
            results[rank] = function(Collective(rank, size, allgather_for(rank)))
        except Exception as error:  # noqa: BLE001 - handed back to the test
            results[rank] = error

    threads = [threading.Thread(target=body, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def convert(src, dst, size=1, **options):
    """convert_libsvm on ``size`` simulated ranks; rank 0's result, or the error all ranks raised alike."""
    results = run_ranks(size, lambda group: convert_libsvm(src, dst, collective=group, **options))
    if isinstance(results[0], Exception):
        assert all(type(r) is type(results[0]) and str(r) == str(results[0]) for r in results)
        raise results[0]
    assert all(r == results[0] for r in results)
    return results[0]


def read_back(path):
    meta = inspect_csr(path, require_y=False)
    return meta, read_csr_slab(meta, 0, meta.n)


def _same_blocks(text: bytes):
    blocks = [parse_libsvm_block(text, engine) for engine in ENGINES]
    for block in blocks[1:]:
        for name in FIELDS:
            assert np.array_equal(getattr(blocks[0], name), getattr(block, name), equal_nan=True), name
    return blocks[0]


HANDWRITTEN = (b"# a comment line\n"
               b"+1 qid:3 1:0.5 3:-2.25e1   # trailing comment\n"
               b"-1 2:1 4:0.12345678901234567891\n"
               b"\r\n"
               b"0.5 \n"
               b"1 1:nan 2:-inf 3:1e400 4:.5 5:1. 6:-0\n"
               b"   # only a comment\n"
               b"2\t7:3\r\n"
               b"3 1:1")


def test_parser_handles_what_tools_write():
    block = _same_blocks(HANDWRITTEN)
    assert block.labels.tolist() == [1, -1, 0.5, 1, 2, 3]
    assert block.row_nnz.tolist() == [2, 2, 0, 6, 1, 1]
    assert block.row_line.tolist() == [2, 3, 5, 6, 8, 9]
    assert block.indices.tolist() == [1, 3, 2, 4, 1, 2, 3, 4, 5, 6, 7, 1]
    assert block.values[1] == -22.5 and block.values[3] == float("0.12345678901234567891")
    assert np.isnan(block.values[4]) and block.values[5] == -np.inf and block.values[6] == np.inf
    assert np.signbit(block.values[9]) and block.lines == 8


@pytest.mark.parametrize("text, line, message", [
    (b"1 2:3\nx 1:2\n", 2, "label 'x' is not a number"),
    (b"1 2\n", 1, "bad feature '2'"),
    (b"1 a:2\n", 1, "bad feature 'a:2'"),
    (b"1 2:x\n", 1, "bad feature '2:x'"),
    (b"1 2:\n", 1, "bad feature '2:'"),
    (b"1 :3\n", 1, "bad feature ':3'"),
    (b"1 2:3:4\n", 1, "bad feature '2:3:4'"),
    (b"1 -2:3\n", 1, "bad feature '-2:3'"),
    (b"1 2:1_0\n", 1, "bad feature '2:1_0'"),
    (b"1 2:0x1p3\n", 1, "bad feature '2:0x1p3'"),
    (b"1:2 3:4\n", 1, "label '1:2'"),
    (b"\n\n1 2:3 4:5e\n", 3, "bad feature '4:5e'"),
])
@pytest.mark.parametrize("engine", ENGINES)
def test_syntax_errors_name_the_line_and_token(text, line, message, engine):
    with pytest.raises(LibsvmSyntaxError, match=message) as error:
        parse_libsvm_block(text, engine)
    assert error.value.line == line


number = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False, width=64).map(repr),
                   st.floats(-1e3, 1e3).map(lambda v: f"{v:.6g}"), st.sampled_from(["+1", "-1", "1.", ".5", "1e-5",
                                                                                    "0.1234567890123456789012"]))
feature = st.tuples(st.integers(0, 10**6), number).map(lambda t: f"{t[0]}:{t[1]}")
line = st.tuples(number, st.lists(feature, max_size=6), st.sampled_from(["", " ", "\t", " # c", "\r"]),
                 st.booleans()).map(lambda t: (t[0] + (" qid:7" if t[3] else "") + "".join(" " + f for f in t[1])
                                               + t[2]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(line, st.sampled_from(["", "#x", "  "])), max_size=12))
def test_engines_agree_on_random_files(lines):
    text = "\n".join(lines).encode()
    block = _same_blocks(text)
    expected = [float(x.split()[0]) for x in lines if x.split("#")[0].strip()]
    assert np.array_equal(block.labels, np.array(expected, dtype=np.float64).reshape(-1))


def _dumped(tmp_path, zero_based, query_id=None, n=120, d=30, seed=0):
    rng = np.random.default_rng(seed)
    matrix = sp.random(n, d, density=0.1, format="lil", random_state=seed)
    matrix[7] = 0
    matrix = matrix.tocsr()
    matrix.eliminate_zeros()
    y = rng.integers(0, 2, n) * 2 - 1
    path = tmp_path / "data.svm"
    dump_svmlight_file(matrix, y, str(path), zero_based=zero_based, comment="written by scikit-learn",
                       query_id=query_id)
    return path, matrix, y


@pytest.mark.parametrize("zero_based", [True, False])
@pytest.mark.parametrize("qid", [False, True])
def test_sklearn_files_convert_exactly(tmp_path, zero_based, qid):
    path, matrix, y = _dumped(tmp_path, zero_based, np.arange(120) // 10 if qid else None)
    expected_x, expected_y = load_svmlight_file(str(path), n_features=30, zero_based=zero_based)
    summary = convert(path, tmp_path / "out.h5", n_features=30, zero_based=zero_based, dtype="float64")
    meta, slab = read_back(tmp_path / "out.h5")
    assert (summary["n"], summary["d"], summary["nnz"]) == (120, 30, matrix.nnz)
    assert (slab.to_scipy() != expected_x).nnz == 0 and np.array_equal(slab.y, expected_y)
    assert meta.attrs["source_format"] == "libsvm"


def test_one_based_by_default_and_a_clear_hint_for_zero_based_files(tmp_path):
    path, _, _ = _dumped(tmp_path, zero_based=True)
    with pytest.raises(InputError, match=r"line \d+: feature index 0 is invalid; indices are 1-based unless"):
        convert(path, tmp_path / "out.h5", size=2)
    assert sorted(os.listdir(tmp_path)) == ["data.svm"]  # no output, no part files


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranks_give_identical_bytes(tmp_path, size):
    path, _, _ = _dumped(tmp_path, zero_based=False, n=400)
    reference = tmp_path / "one.h5"
    convert(path, reference, block_bytes=300)
    convert(path, tmp_path / "many.h5", size=size, block_bytes=257)
    assert (tmp_path / "many.h5").read_bytes() == reference.read_bytes()
    convert(path, tmp_path / "dense1.h5", dense=True)
    convert(path, tmp_path / "denseN.h5", size=size, dense=True, block_bytes=500)
    assert (tmp_path / "denseN.h5").read_bytes() == (tmp_path / "dense1.h5").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["data.svm", "dense1.h5", "denseN.h5", "many.h5", "one.h5"]


def test_engines_write_identical_files(tmp_path):
    path, _, _ = _dumped(tmp_path, zero_based=False, n=300)
    for engine in ENGINES:
        convert(path, tmp_path / f"{engine}.h5", size=2, engine=engine, block_bytes=1000)
    assert len({(tmp_path / f"{e}.h5").read_bytes() for e in ENGINES}) == 1


def test_dense_output_equals_the_csr_output(tmp_path):
    path, _, y = _dumped(tmp_path, zero_based=False)
    expected, _ = load_svmlight_file(str(path), n_features=30)  # "%.16g" text: exact only after parsing
    convert(path, tmp_path / "d.h5", dense=True, dtype="float64", labels="pm1", n_features=32)
    with h5py.File(tmp_path / "d.h5") as h5:
        assert np.array_equal(h5["X"][:, :30], expected.toarray()) and not h5["X"][:, 30:].any()
        assert np.array_equal(h5["y"][:], (y == 1).astype(float)) and h5.attrs["task"] == "binary"


def test_empty_rows_trailing_spaces_blank_lines_and_no_final_newline(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 \n\n-1 3:2  \n0\n  \n1 1:1 2:2 \t\n2 4:4")
    summary = convert(path, tmp_path / "x.h5", size=3, block_bytes=4)
    _, slab = read_back(tmp_path / "x.h5")
    assert summary["n"] == 5 and summary["d"] == 4
    assert slab.indptr.tolist() == [0, 0, 1, 1, 3, 4] and slab.y.tolist() == [1, -1, 0, 1, 2]
    assert slab.indices.tolist() == [2, 0, 1, 3]


def test_n_features_aligns_and_refuses_larger_indices(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 1:1\n0 3:1\n1 2:5\n")
    assert convert(path, tmp_path / "a.h5", n_features=10)["d"] == 10
    with pytest.raises(InputError, match=r"x.svm line 2: feature index 3 exceeds n_features \(--n-features\) 2"):
        convert(path, tmp_path / "b.h5", n_features=2, size=3, block_bytes=3)


def test_errors_carry_the_line_in_the_whole_file_from_any_rank(tmp_path):
    path = tmp_path / "x.svm"
    lines = [f"{i % 2} {i % 5 + 1}:1.5" for i in range(300)]
    lines[250] = "1 2:oops"
    path.write_text("\n".join(lines) + "\n")
    for size in (1, 2, 3):
        with pytest.raises(InputError, match=r"x.svm line 251: bad feature '2:oops'"):
            convert(path, tmp_path / "o.h5", size=size, block_bytes=97)
    assert sorted(os.listdir(tmp_path)) == ["x.svm"]


def test_label_modes(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"-1 1:1\n1 2:1\n-1 1:2\n")
    summary = convert(path, tmp_path / "a.h5")
    assert summary["task"] == "regression" and any("pm1" in note for note in summary["notes"])
    assert convert(path, tmp_path / "b.h5", labels="pm1")["task"] == "binary"
    assert read_back(tmp_path / "b.h5")[1].y.tolist() == [0, 1, 0]
    assert convert(path, tmp_path / "c.h5", labels="classes")["task"] == "binary"
    with h5py.File(tmp_path / "c.h5") as h5:
        assert list(h5.attrs["label_classes"]) == ["-1", "1"]
    with pytest.raises(InputError, match="task binary needs labels 0/1"):
        convert(path, tmp_path / "d.h5", task="binary")
    path.write_bytes(b"3 1:1\n1 2:1\n")
    with pytest.raises(InputError, match=r"not all -1 or \+1 \(first: 3 on line 1\)"):
        convert(path, tmp_path / "e.h5", labels="pm1", size=2)
    path.write_bytes(b"3 1:1\n1 2:1\n2 1:1\n")
    assert any("multiclass" in note for note in convert(path, tmp_path / "f.h5")["notes"])
    path.write_bytes(b"7 1:1\n-2 2:1\n7 1:2\n3.5 2:2\n")   # K = 3 classes, mapped in sorted order
    for size in (1, 2, 3):
        summary = convert(path, tmp_path / f"g{size}.h5", labels="classes", size=size)
        assert any("-2 -> 0, 3.5 -> 1, 7 -> 2" in note and "multinomial" in note for note in summary["notes"])
        assert read_back(tmp_path / f"g{size}.h5")[1].y.tolist() == [2, 0, 2, 1]
        with h5py.File(tmp_path / f"g{size}.h5") as h5:
            assert list(h5.attrs["label_classes"]) == ["-2", "3.5", "7"]
    path.write_bytes(b"5 1:1\n")
    with pytest.raises(InputError, match="needs 2 to 50 classes"):
        convert(path, tmp_path / "h.h5", labels="classes")


def test_int64_indices_and_float32_values(tmp_path):
    path, _, _ = _dumped(tmp_path, zero_based=False)
    expected, _ = load_svmlight_file(str(path), n_features=30)
    convert(path, tmp_path / "x.h5", index_dtype="int64", size=2)
    meta, slab = read_back(tmp_path / "x.h5")
    assert meta.index_dtype == np.int64 and meta.dtype == np.float32
    assert np.array_equal(slab.to_scipy().toarray(), expected.astype(np.float32).toarray())


def test_a_line_longer_than_the_block(tmp_path):
    path = tmp_path / "x.svm"
    long_line = "1 " + " ".join(f"{j}:{j}" for j in range(1, 2000))
    path.write_text(f"0 1:1\n{long_line}\n0 2:2\n")
    summary = convert(path, tmp_path / "x.h5", size=3, block_bytes=64)
    assert summary["n"] == 3 and summary["nnz"] == 2001


def test_line_aligned_ranges_cover_the_file(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"aaaa\nbb\n\ncccccccccccc\nd")
    size_of = os.path.getsize(path)
    for size in range(1, 12):
        ranges = [line_aligned_range(str(path), size, r) for r in range(size)]
        assert ranges[0][0] == 0 and ranges[-1][1] == size_of
        assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:]))
        assert all(start == 0 or path.read_bytes()[start - 1:start] == b"\n" for start, _ in ranges)


def test_bad_options_and_missing_files(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 1:1\n")
    with pytest.raises(InputError, match="source file not found"):
        convert(tmp_path / "nope.svm", tmp_path / "o.h5", size=2)
    with pytest.raises(InputError, match="labels must be one of"):
        convert(path, tmp_path / "o.h5", labels="bad")
    with pytest.raises(InputError, match="same file"):
        convert(path, path)
    empty = tmp_path / "empty.svm"
    empty.write_bytes(b"# nothing\n\n")
    with pytest.raises(InputError, match="has no data rows"):
        convert(empty, tmp_path / "o.h5", size=2)


def test_the_first_bad_index_is_reported(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 1:1\n0 9:1\n1 0:5\n")
    with pytest.raises(InputError, match=r"line 2: feature index 9 exceeds"):
        convert(path, tmp_path / "o.h5", n_features=5)
