"""Fuzz (hypothesis): malformed HDF5 inputs and option values end with a clear error, no traceback, no hang.

Every case runs ``pgd train`` in this process (one rank, :mod:`pgd_inprocess`), with an alarm as the hang
guard; an internal error (an abort) fails the test.
"""

from __future__ import annotations

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.inprocess import run_main

HANG_SECONDS = 20


def _good(handle, n=12, d=3):
    rng = np.random.default_rng(0)
    handle.create_dataset("X", data=rng.standard_normal((n, d)))
    handle.create_dataset("y", data=(rng.random(n) > 0.5).astype(float))


def _write(path, kind: str, seed: int) -> None:
    """A malformed (or, for 'good', a valid) dataset of the given kind."""
    rng = np.random.default_rng(seed)
    if kind == "random-bytes":
        path.write_bytes(rng.bytes(int(rng.integers(0, 3000))))
        return
    if kind == "empty-file":
        path.write_bytes(b"")
        return
    with h5py.File(path, "w") as handle:
        handle.attrs["pgd_format"] = 1
        if kind == "good":
            _good(handle)
        elif kind == "no-X":
            handle.create_dataset("y", data=np.zeros(4))
        elif kind == "X-1d":
            handle.create_dataset("X", data=np.zeros(5))
            handle.create_dataset("y", data=np.zeros(5))
        elif kind == "X-3d":
            handle.create_dataset("X", data=np.zeros((2, 2, 2)))
            handle.create_dataset("y", data=np.zeros(2))
        elif kind == "X-strings":
            handle.create_dataset("X", data=np.array([[b"a", b"b"]] * 3))
            handle.create_dataset("y", data=np.zeros(3))
        elif kind == "X-complex":
            handle.create_dataset("X", data=np.ones((3, 2), dtype=complex))
            handle.create_dataset("y", data=np.zeros(3))
        elif kind == "X-group":
            handle.create_group("X")
            handle.create_dataset("y", data=np.zeros(3))
        elif kind == "y-length":
            handle.create_dataset("X", data=np.zeros((5, 2)))
            handle.create_dataset("y", data=np.zeros(4))
        elif kind == "y-2d":
            handle.create_dataset("X", data=np.zeros((4, 2)))
            handle.create_dataset("y", data=np.zeros((4, 2)))
        elif kind == "no-rows":
            handle.create_dataset("X", data=np.zeros((0, 2)))
            handle.create_dataset("y", data=np.zeros(0))
        elif kind == "no-columns":
            handle.create_dataset("X", data=np.zeros((3, 0)))
            handle.create_dataset("y", data=np.zeros(3))
        elif kind == "nan":
            X = rng.standard_normal((6, 2))
            X[int(rng.integers(0, 6)), 1] = np.nan
            handle.create_dataset("X", data=X)
            handle.create_dataset("y", data=np.zeros(6))
        elif kind == "labels-2":
            handle.create_dataset("X", data=rng.standard_normal((6, 2)))
            handle.create_dataset("y", data=np.full(6, 2.0))
    if kind == "truncated":
        with h5py.File(path, "w") as handle:
            _good(handle, n=400, d=8)
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.truncate(int(size * rng.uniform(0.05, 0.95)))


DATA_KINDS = ["good", "random-bytes", "empty-file", "truncated", "no-X", "X-1d", "X-3d", "X-strings",
              "X-complex", "X-group", "y-length", "y-2d", "no-rows", "no-columns", "nan", "labels-2"]

BAD_OPTIONS = st.one_of(
    st.tuples(st.just("--lr"), st.sampled_from(["0", "-1", "nan", "inf", "fast", ""])),
    st.tuples(st.just("--max-iter"), st.sampled_from(["-1", "x", "1.5"])),
    st.tuples(st.just("--checkpoint-every"), st.sampled_from(["-2", "often"])),
    st.tuples(st.just("--max-time"), st.sampled_from(["0", "-5", "soon", "1:2:3:4", "nan"])),
    st.tuples(st.just("--checkpoint"), st.sampled_from(["{tmp}/missing/ck.h5", "{tmp}"])),
    st.tuples(st.just("--out"), st.sampled_from(["{tmp}/missing/m.h5", "{tmp}"])),
    st.tuples(st.just("--resume"), st.just(None)),
    st.tuples(st.just("--checkpoint-seconds"), st.sampled_from(["-1", "x"])),
    st.tuples(st.just("--hdf5-locking"), st.sampled_from(["maybe", ""])),
    st.tuples(st.just("--x-key"), st.sampled_from(["missing", "y"])),
    st.tuples(st.just("--loss"), st.sampled_from(["hinge", ""])),
    st.tuples(st.just("--resume-from-damaged"), st.just(None)),
)


@settings(max_examples=36, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(DATA_KINDS), bad=st.lists(BAD_OPTIONS, min_size=0, max_size=2),
       seed=st.integers(0, 2 ** 16))
def test_malformed_inputs_give_one_line_errors(tmp_path_factory, monkeypatch, capsys, kind, bad, seed):
    tmp = tmp_path_factory.mktemp("fuzz")
    data = tmp / "data.h5"
    _write(data, kind, seed)
    args = ["train", str(data), "--loss", "logistic", "--max-iter", "3", "--quiet"]
    for name, value in bad:
        if name == "--resume-from-damaged":  # a checkpoint that is random bytes
            (tmp / "ck.h5").write_bytes(np.random.default_rng(seed).bytes(500))
            args += ["--checkpoint", str(tmp / "ck.h5"), "--resume"]
            continue
        args += [name] if value is None else [name, value.format(tmp=tmp)]
    expect_error = kind != "good" or bool(bad)

    code, out, err = run_main(monkeypatch, capsys, *args, hang_seconds=HANG_SECONDS)
    assert "Traceback" not in out + err, (args, err)
    if not expect_error:
        assert code == 0, (args, err)
        return
    assert code == 2, (args, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and (lines[-1].startswith("pgd: error: ") or lines[-1].startswith("Error: ")), (args, err)
    assert "internal error" not in err
