"""--mode async, --mode shm and local SGD (--sync-every) honour signals, --max-time, checkpoints and --resume.

Each mode runs its cases in one mpirun job (``mpi_cases.py``): an uninterrupted run; a run stopped by SIGTERM
to one rank (exit 75, a checkpoint); the resumed run (bit-identical to the uninterrupted one where the mode
is deterministic: local SGD, and shm with one rank per node; async continues from the checkpoint's weights
and update count); and ``--max-time`` without ``--checkpoint`` (exit 0 and the model of the last iterate,
marked as stopped by the time budget) and, for the parameter server's own time decision, with it (exit 75
and a checkpoint).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pgd.outputs.checkpoint import read_checkpoint
from support.files import read_weights, write_dataset
from support.mpi import run_cases

pytestmark = pytest.mark.mpi

SLOW = {"PGD_TEST_SLEEP_PER_ITER": "0.005"}  # steps slow enough for a signal or a time budget mid-run
ENDLESS = ("--updates", "100000000")
QUIET_OSC = {"OMPI_MCA_osc": "sm"}  # Open MPI's UCX one-sided component only prints noise here


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 8))
    return write_dataset(tmp_path_factory.mktemp("modes") / "exact.h5", X, X @ rng.standard_normal(8) + 0.25)


def _cases(tmp_path, data, mode_args, budget, *, signal_rank, exact, extra_env=None, time_checkpoint=False):
    train = ["train", data, "--loss", "squared", "--quiet", "--local-batch", "16", *mode_args]
    env = dict(extra_env or {})
    ck, ck_time = tmp_path / "ck.h5", tmp_path / "ck-time.h5"
    cases = [
        {"args": [*train, *ENDLESS, "--checkpoint", ck, "--checkpoint-every", 30, "--out", tmp_path / "stopped.h5"],
         "env": dict(env, **SLOW), "signal": {"rank": signal_rank, "when_exists": ck, "name": "SIGTERM"}},
        {"args": [*train, "--updates", budget, "--checkpoint", ck, "--resume", "--out", tmp_path / "resumed.h5"],
         "env": env},
        {"args": [*train, *ENDLESS, "--max-time", 1.5, "--out", tmp_path / "timed.h5"], "env": dict(env, **SLOW)},
    ]
    if time_checkpoint:  # the parameter server's own time decision (the others share data mode's)
        cases.append({"args": [*train, *ENDLESS, "--max-time", 1.5, "--checkpoint", ck_time, "--out",
                               tmp_path / "nomodel.h5"], "env": dict(env, **SLOW)})
    if exact:
        cases.insert(0, {"args": [*train, "--updates", budget, "--out", tmp_path / "whole.h5"], "env": env})
    return cases


def _check(tmp_path, results, budget, exact):
    if exact:
        whole = results.pop(0)
        assert whole["code"] == 0, whole["stderr"]
    stopped, resumed, timed, *timed_ck = results
    assert stopped["codes_by_rank"] == [75] * len(stopped["codes_by_rank"]), stopped["stderr"]
    assert "pgd: stopped: signal SIGTERM at update" in stopped["stderr"] and "Traceback" not in stopped["stderr"]
    assert not (tmp_path / "stopped.h5").exists()
    stopped_at = read_checkpoint(str(tmp_path / "ck.h5"))["iteration"]
    assert 0 < stopped_at < budget
    assert resumed["code"] == 0, resumed["stderr"]
    assert f"resuming from {tmp_path / 'ck.h5'} at update {stopped_at}" in resumed["stdout"]
    w, b, attrs = read_weights(tmp_path / "resumed.h5")
    assert attrs["updates"] >= budget and attrs["final_loss"] < 1e-6
    if exact:
        w_whole, b_whole, _ = read_weights(tmp_path / "whole.h5")
        assert np.array_equal(w, w_whole) and b == b_whole
        with h5py.File(tmp_path / "whole.h5") as first, h5py.File(tmp_path / "resumed.h5") as second:
            assert np.array_equal(first["history/loss"][...], second["history/loss"][...])
    assert timed["code"] == 0, timed["stderr"]
    _, _, attrs = read_weights(tmp_path / "timed.h5")
    assert attrs["stop_reason"].startswith("time budget --max-time 1.5 s")
    assert attrs["converged"] == (attrs["optimality"] <= attrs["optimality_target"])  # a time stop claims nothing
    for result in timed_ck:
        assert result["codes_by_rank"] == [75] * len(result["codes_by_rank"]), result["stderr"]
        assert "pgd: stopped: time budget --max-time 1.5 s nearly used" in result["stderr"]
        assert read_checkpoint(str(tmp_path / "ck-time.h5"))["iteration"] > 0
        assert not (tmp_path / "nomodel.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_local_sgd(tmp_path, data):
    cases = _cases(tmp_path, data, ("--sync-every", "4"), 900, signal_rank=1, exact=True)
    _check(tmp_path, run_cases(3, cases, tmp_path), 900, exact=True)


def test_shm_one_rank_per_node(tmp_path, data):
    """One rank per (simulated) node: no races, so the resumed run is bit-identical."""
    cases = _cases(tmp_path, data, ("--mode", "shm", "--sync-every", "3"), 900, signal_rank=2, exact=True,
                   extra_env={"PGD_SHM_NODE_RANKS": "1"})
    _check(tmp_path, run_cases(3, cases, tmp_path, env=QUIET_OSC), 900, exact=True)


def test_shm_one_node_and_async_two_servers(tmp_path, data):
    """Racing ranks on one node, and parameter servers (a signal to server 1 travels through the workers'
    messages to server 0): stopped, checkpointed and resumed, not bit for bit."""
    shm = tmp_path / "shm"
    shm.mkdir()
    cases = _cases(shm, data, ("--mode", "shm"), 900, signal_rank=1, exact=False)
    _check(shm, run_cases(3, cases, shm, env=QUIET_OSC), 900, exact=False)
    ps = tmp_path / "async"
    ps.mkdir()
    cases = _cases(ps, data, ("--mode", "async", "--servers", "2"), 900, signal_rank=1, exact=False,
                   time_checkpoint=True)
    _check(ps, run_cases(4, cases, ps), 900, exact=False)
