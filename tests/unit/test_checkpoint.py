"""Checkpoints in one process: format round trip, fallback on damage, refusals, exact resume, options."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pgd.config import parse_duration
from pgd.outputs.checkpoint import (
    CheckpointError,
    _read_state,
    _write_state,
    load_newest,
    previous_path,
    read_checkpoint,
)
from support.files import read_weights, write_dataset
from support.inprocess import run_main


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.standard_normal(120) > 0).astype(float)
    return write_dataset(tmp_path_factory.mktemp("ck") / "d.h5", X, y)


TRAIN = ("--loss", "logistic", "--optimizer", "gd", "--tol", "0", "--rtol", "0", "--quiet")


def test_state_dict_round_trip(tmp_path):
    state = {"name": "adam", "lr": 0.1, "t": 7, "beta": (0.9, 0.999), "flag": True, "none": None,
             "nan": float("nan"), "big": 2 ** 100, "params": np.arange(5.0), "m": {"v": np.ones(3)},
             "pairs": [np.zeros(2), np.ones(2)]}
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        _write_state(handle.create_group("s"), state)
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        back = _read_state(handle["s"])
    assert back["name"] == "adam" and back["lr"] == 0.1 and back["t"] == 7 and back["big"] == 2 ** 100
    assert back["beta"] == [0.9, 0.999] and back["flag"] is True and back["none"] is None
    assert np.isnan(back["nan"])
    np.testing.assert_array_equal(back["params"], np.arange(5.0))
    np.testing.assert_array_equal(back["m"]["v"], np.ones(3))
    np.testing.assert_array_equal(back["pairs"][1], np.ones(2))


def test_parse_duration():
    assert parse_duration("90") == 90
    assert parse_duration("01:30") == 90
    assert parse_duration("1-00:00:10") == 86410
    for bad in ("x", "1:2:3:4", "-5", "nan"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_resume_is_bit_exact_and_falls_back_on_damage(tmp_path, data_path, monkeypatch, capsys):
    whole = tmp_path / "whole.h5"
    code, _, _ = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 30, "--out", whole)
    assert code == 0
    ck = str(tmp_path / "ck.h5")
    code, _, _ = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 20, "--out",
                          tmp_path / "part.h5", "--checkpoint", ck, "--checkpoint-every", 5)
    assert code == 0
    assert read_checkpoint(ck)["iteration"] == 20 and read_checkpoint(previous_path(ck))["iteration"] == 15
    # a flipped byte in the newest checkpoint: detected, the previous one is used, and says so
    raw = bytearray(open(ck, "rb").read())
    params = read_checkpoint(ck)["optimizer"]["params"]
    offset = bytes(raw).find(params.tobytes())
    assert offset > 0
    raw[offset + 3] ^= 0xFF
    open(ck, "wb").write(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(ck)
    resumed = tmp_path / "resumed.h5"
    code, out, err = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 30, "--out",
                              resumed, "--checkpoint", ck, "--resume")
    assert code == 0, err
    assert "damaged" in out and "ck.h5.prev (iteration 15)" in out
    w_whole, b_whole, whole_attrs = read_weights(whole)
    w_res, b_res, resumed_attrs = read_weights(resumed)
    assert np.array_equal(w_whole, w_res) and b_whole == b_res
    # one Allreduce of d + 2 float64 per iteration, before and after a resume
    for attrs in (whole_attrs, read_weights(tmp_path / "part.h5")[2], resumed_attrs):
        assert attrs["comm_bytes_per_iteration"] == (4 + 2) * 8
    with h5py.File(whole) as a, h5py.File(resumed) as b:
        assert np.array_equal(a["history/loss"][...], b["history/loss"][...])
        assert len(b["history/loss"]) == 31


def test_truncated_checkpoints_and_refusals(tmp_path, data_path, monkeypatch, capsys):
    ck = str(tmp_path / "ck.h5")
    code, _, _ = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 4,
                          "--checkpoint", ck, "--checkpoint-every", 2)
    assert code == 0
    # other options that change the problem, other data: refused with a clear message
    code, _, err = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--l2", "0.5", "--max-iter", 6,
                            "--checkpoint", ck, "--resume")
    assert code == 2 and "--l2" in err and "Traceback" not in err
    other = write_dataset(tmp_path / "other.h5", np.ones((10, 4)), np.zeros(10))
    code, _, err = run_main(monkeypatch, capsys, "train", other, *TRAIN, "--max-iter", 6,
                            "--checkpoint", ck, "--resume")
    assert code == 2 and "different data" in err
    # the newest truncated: fallback; both truncated: a one-line error
    size = os.path.getsize(ck)
    with open(ck, "r+b") as handle:
        handle.truncate(size // 2)
    payload, notes = load_newest(ck)
    assert payload["iteration"] == 2 and "damaged" in notes[0]
    with open(previous_path(ck), "r+b") as handle:
        handle.truncate(100)
    code, _, err = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 6,
                            "--checkpoint", ck, "--resume")
    assert code == 2 and "no valid checkpoint" in err and "Traceback" not in err


def test_resume_without_checkpoint_starts_anew(tmp_path, data_path, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 2,
                            "--checkpoint", tmp_path / "none.h5", "--resume")
    assert code == 0 and "starting from the beginning" in out
    code, _, err = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--resume")
    assert code == 2 and "--resume needs --checkpoint" in err


def test_max_time_stops_with_a_checkpoint(tmp_path, data_path, monkeypatch, capsys):
    monkeypatch.setenv("PGD_TEST_SLEEP_PER_ITER", "0.05")
    ck = str(tmp_path / "ck.h5")
    out_model = tmp_path / "m.h5"
    code, _, err = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--max-iter", 100000,
                            "--checkpoint", ck, "--max-time", "1", "--checkpoint-seconds", "0.2",
                            "--out", out_model)
    assert code == 75, err
    assert "time budget" in err and not out_model.exists()
    last = read_checkpoint(ck)["iteration"]
    assert 2 <= last < 100000
    assert read_checkpoint(previous_path(ck))["iteration"] < last  # a periodic one (every 0.2 s) before
    code, _, err = run_main(monkeypatch, capsys, "train", data_path, *TRAIN, "--checkpoint", ck, "--out", ck)
    assert code == 2 and "--out and --checkpoint are the same file" in err


class _World:
    def __init__(self, size):
        self.size = size

    def Get_size(self):  # noqa: N802 - mpi4py's name
        return self.size


@pytest.mark.parametrize("variable", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"])
def test_singleton_detection_reads_the_launcher(variable):
    from pgd.errors import PgdError  # noqa: PLC0415
    from pgd.runtime.launcher import refuse_singletons  # noqa: PLC0415

    with pytest.raises(PgdError, match="launcher started 3 ranks but MPI sees a world of 1"):
        refuse_singletons(_World(1), {variable: "3"})
    refuse_singletons(_World(3), {variable: "3"})  # a real 3-rank world
    refuse_singletons(_World(1), {variable: "1"})


def test_singletons_are_refused():
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2")  # as if launched by mpirun, but MPI says 1
    result = subprocess.run([sys.executable, "-m", "pgd", "info"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 2
    assert "launcher started 2 ranks but MPI sees a world of 1" in result.stderr
    assert "Traceback" not in result.stderr


class _TwoRanks:
    """Rank 0 of a pretend 2-rank world whose rank 1 holds different optimizer state."""

    def Get_size(self):  # noqa: N802
        return 2

    def Get_rank(self):  # noqa: N802
        return 0

    def allgather(self, value):
        return [value, "rank 1 differs"]

    def gather(self, value, root=0):
        return [value, dict(value, params=value["params"] + 1)]


def test_per_rank_state_is_stored_per_rank(tmp_path):
    from types import SimpleNamespace  # noqa: PLC0415

    from pgd.config import RunConfig  # noqa: PLC0415
    from pgd.outputs.checkpoint import _write_file, checkpoint_payload  # noqa: PLC0415

    optimizer = SimpleNamespace(state_dict=lambda: {"name": "gd", "params": np.arange(3.0)})
    payload = checkpoint_payload(RunConfig({"seed": 1}), _TwoRanks(), optimizer, 4, {"loss": [1.0]}, {})
    _write_file(str(tmp_path / "ck.h5"), payload)
    back = read_checkpoint(str(tmp_path / "ck.h5"))
    assert back["sharded"] == 1 and back["iteration"] == 4
    np.testing.assert_array_equal(back["optimizer"]["rank_1"]["params"], np.arange(3.0) + 1)


def test_a_stop_signal_during_start_up_is_kept_for_the_loop():
    import signal

    from pgd.training import preempt

    preempt.catch_signals_early()
    os.kill(os.getpid(), signal.SIGUSR1)  # the default action would kill the process
    flag = preempt.adopt_signal_flag()  # what the loop's hook takes over
    flag.restore()
    assert flag.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
