"""A full disk is one line (exit 2) and keeps the old file; one run per checkpoint (a lock, stale locks taken
over); SIGTERM to mpirun itself leaves no temporary file and an intact checkpoint.

The disk-full test mounts a real 1 MiB tmpfs (root only; skipped where mounting is not allowed).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pgd.errors import InputError
from pgd.outputs.checkpoint import read_checkpoint
from pgd.outputs.runlock import RunLock, lock_path
from support.files import assert_one_error_line, snapshot, write_dataset
from support.inprocess import run_main
from support.mpi import MPIRUN, MPIRUN_FLAGS, run_cases


@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(directory, leave: int) -> None:
    """Fill the file system of ``directory`` up to ``leave`` free bytes."""
    stat = os.statvfs(directory)
    with open(os.path.join(directory, "filler"), "wb") as handle:
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))


@pytest.mark.mpi
def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path, small_disk):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 3000))  # a model of 3000 weights (24 KB) and predictions do not fit
    data = write_dataset(tmp_path / "d.h5", X, (X[:, 0] > 0).astype(float))
    model = tmp_path / "m.h5"
    (small_disk / "old-model.h5").write_bytes(b"the previous model")
    (small_disk / "old-metrics.jsonl").write_bytes(b"the previous metrics")
    (small_disk / "old-pred.h5").write_bytes(b"the previous predictions")
    _fill(small_disk, leave=0)
    before = snapshot(small_disk)
    train = ["train", data, "--loss", "logistic", "--max-iter", 20, "--tol", 0, "--rtol", 0, "--quiet"]
    results = run_cases(2, [
        {"args": [*train, "--out", model]},
        {"args": [*train, "--out", small_disk / "old-model.h5"]},
        {"args": [*train, "--metrics", small_disk / "old-metrics.jsonl"]},
        {"args": ["predict", model, data, "--out", small_disk / "old-pred.h5"]},
        {"args": [*train, "--checkpoint", small_disk / "ck.h5", "--checkpoint-every", 10]},
    ], tmp_path)
    assert results[0]["code"] == 0, results[0]["stderr"]
    for result, what in zip(results[1:4], ("model file", "metrics file", "prediction file")):
        line = assert_one_error_line(result, f"cannot write {what}")
        assert "no space left on device (the previous file is unchanged)" in line
    assert_one_error_line(results[4], "cannot write checkpoint")
    assert snapshot(small_disk) == before  # old files intact, no temporary file left


def test_a_second_run_on_the_same_checkpoint_is_refused_and_stale_locks_are_taken_over(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.h5")
    with RunLock(path):
        with pytest.raises(InputError, match=rf"--checkpoint .*ck.h5 is in use by another run \(pid {os.getpid()} "
                                             rf"on {socket.gethostname()}, since "):
            RunLock(path).acquire()
    assert not os.path.exists(lock_path(path))
    with open(lock_path(path), "w") as handle:  # left by a killed run: flock is gone with its process
        handle.write(f"{socket.gethostname()} 999999999 2026-01-01T00:00:00")
    with RunLock(path):
        assert open(lock_path(path)).read().split()[1] == str(os.getpid())

    import fcntl  # noqa: PLC0415

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # a file system without flock: exclusive creation
    with open(lock_path(path), "w") as handle:
        handle.write(f"{socket.gethostname()} 999999999 2026-01-01T00:00:00")  # dead process: stale
    with RunLock(path):
        with pytest.raises(InputError, match="in use by another run"):
            RunLock(path).acquire()
    with open(lock_path(path), "w") as handle:
        handle.write("another-host 12 2026-01-01T00:00:00")
    with pytest.raises(InputError, match=f"if no run uses it, delete {lock_path(path)}"):
        RunLock(path).acquire()


@pytest.mark.mpi
def test_sigterm_to_mpirun_and_a_concurrent_run(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((90, 3))
    data = write_dataset(tmp_path / "d.h5", X, X @ [1.0, 2.0, -1.0])
    ck = tmp_path / "ck.h5"
    train = ["train", data, "--loss", "squared", "--solver", "iterative", "--optimizer", "gd",
             "--tol", "0", "--rtol", "0",
             "--quiet", "--max-iter", "100000",
             "--checkpoint", ck]
    command = [MPIRUN, *MPIRUN_FLAGS, "-n", "2", sys.executable, "-m", "pgd", *map(str, train),
               "--checkpoint-every", "1"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, PGD_BLAS_THREADS="1", PGD_TEST_SLEEP_PER_ITER="0.01"))
    try:
        deadline = time.monotonic() + 60
        while not ck.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        code, _, err = run_main(monkeypatch, capsys, *train, "--out", tmp_path / "second.h5")
        assert code == 2 and "is in use by another run (pid" in err and "Traceback" not in err
        time.sleep(0.3)
        run.send_signal(signal.SIGTERM)  # Open MPI forwards it, then kills the ranks within ~0.5 s
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode != 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    stopped_at = read_checkpoint(str(ck))["iteration"]
    code, out, err = run_main(monkeypatch, capsys, *train, "--max-iter", stopped_at + 3, "--resume")
    assert code == 0 and f"at iteration {stopped_at}" in out, err  # the killed run's lock was stale
    assert not os.path.exists(lock_path(str(ck)))
