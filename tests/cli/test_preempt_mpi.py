"""Under mpirun: SIGTERM mid-run (exit 75, valid checkpoint, exact resume), SIGKILL of one rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from pgd.errors import EXIT_PREEMPTED
from pgd.outputs.checkpoint import read_checkpoint
from support import script as support_script
from support.files import read_weights, write_dataset
from support.mpi import MPIRUN, MPIRUN_FLAGS, run_pgd, run_python

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")]

TRAIN = ("--loss", "squared", "--solver", "iterative", "--optimizer", "gd", "--tol", "0", "--rtol", "0", "--quiet")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((90, 3))
    return write_dataset(tmp_path_factory.mktemp("pre") / "d.h5", X, X @ [1.0, 2.0, -1.0] + 0.5)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _rank_pids(launcher: subprocess.Popen, ranks: int, timeout: float = 30) -> list[int]:
    """The pids of the python rank processes under mpirun (mpirun may exec prterun, then fork ranks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = []
        frontier = [launcher.pid]
        while frontier:
            pid = frontier.pop()
            for child in _children(pid):
                try:
                    cmdline = open(f"/proc/{child}/cmdline", "rb").read()
                except OSError:
                    continue
                if b"-m\x00pgd" in cmdline:
                    pids.append(child)
                else:
                    frontier.append(child)
        if len(pids) == ranks:
            return pids
        time.sleep(0.1)
    raise AssertionError("rank processes not found")


def _start(ranks: int, *args, sleep: float):
    command = [MPIRUN, *MPIRUN_FLAGS, "-n", str(ranks), sys.executable, "-m", "pgd", *map(str, args)]
    env = dict(os.environ, PGD_BLAS_THREADS="1", PGD_TEST_SLEEP_PER_ITER=str(sleep))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, data_path):
    ck = str(tmp_path / "ck.h5")
    run = _start(2, "train", data_path, *TRAIN, "--max-iter", 400, "--checkpoint", ck,
                 "--checkpoint-every", 4, "--out", tmp_path / "stopped.h5", sleep=0.03)
    _wait_for(ck, run)
    os.kill(_rank_pids(run, 2)[1], signal.SIGTERM)  # one rank only: the ranks must agree on the flag
    out, err = run.communicate(timeout=60)
    assert run.returncode == EXIT_PREEMPTED, err
    assert "signal SIGTERM" in err and "Traceback" not in err
    assert not (tmp_path / "stopped.h5").exists()
    stopped_at = read_checkpoint(ck)["iteration"]
    assert 0 < stopped_at < 400
    resumed = run_pgd(2, "train", data_path, *TRAIN, "--max-iter", 400, "--checkpoint", ck, "--resume",
                      "--out", tmp_path / "resumed.h5")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at iteration {stopped_at}" in resumed.stdout
    whole = run_pgd(2, "train", data_path, *TRAIN, "--max-iter", 400, "--out", tmp_path / "whole.h5")
    assert whole.returncode == 0, whole.stderr
    w_whole, b_whole, _ = read_weights(tmp_path / "whole.h5")
    w_res, b_res, _ = read_weights(tmp_path / "resumed.h5")
    assert np.array_equal(w_whole, w_res) and b_whole == b_res
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "resumed.h5") as b:
        assert np.array_equal(a["history/loss"][...], b["history/loss"][...])
    # another rank count: allowed in data-parallel mode, reported, equal up to rounding
    other = run_pgd(3, "train", data_path, *TRAIN, "--max-iter", 400, "--checkpoint", ck, "--resume",
                    "--out", tmp_path / "three.h5")
    assert other.returncode == 0, other.stderr
    assert "written by 2 ranks and this run has 3" in other.stdout
    np.testing.assert_allclose(read_weights(tmp_path / "three.h5")[0], w_whole, rtol=1e-10, atol=1e-12)


def test_sigkill_of_one_rank_ends_the_job(tmp_path, data_path):
    ck = str(tmp_path / "ck.h5")
    run = _start(2, "train", data_path, *TRAIN, "--max-iter", 100000, "--checkpoint", ck,
                 "--checkpoint-every", 5, sleep=0.02)
    _wait_for(ck, run)
    os.kill(_rank_pids(run, 2)[1], signal.SIGKILL)
    try:
        run.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        pytest.fail("the job did not end within 60 s after SIGKILL of one rank")
    assert run.returncode != 0
    assert read_checkpoint(ck)["iteration"] > 0  # the last checkpoint is intact (or its predecessor)


def test_unexpected_exception_on_one_rank_aborts_the_job(tmp_path, data_path):
    script = support_script("mpi_crash_check.py")
    result = run_python(2, script, "train", data_path, *TRAIN, "--max-iter", 50, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "internal error on rank 1: RuntimeError: injected failure" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_rows_on_one_rank_fail_all_ranks_together(tmp_path):
    X = np.ones((10, 2))
    X[8, 1] = np.nan  # in the second rank's slice only
    path = write_dataset(tmp_path / "nan.h5", X, np.zeros(10))
    result = run_pgd(2, "train", path, *TRAIN, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("pgd: error:") == 1 and "non-finite values" in result.stderr
