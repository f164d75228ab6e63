"""What rank 0 shows while training: where the bar goes, when log lines come, the last line once, and a live
bar under ``mpirun`` in a (pseudo-)terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pgd.outputs.progress import LOG_SECONDS, REDRAW_SECONDS, Progress, parent_terminal, terminal_stream
from support.files import write_dataset
from support.mpi import MPIRUN, MPIRUN_FLAGS, needs_mpirun


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def _lines(stream) -> list[str]:
    return stream.getvalue().splitlines()


def test_log_lines_by_iteration_and_by_time_and_the_last_one_once():
    clock, log = FakeClock(), io.StringIO()
    progress = Progress(100, enabled=True, terminal=None, log=log, clock=clock)
    for iteration in range(0, 13):
        clock.now += 0.5
        progress.update(iteration, 1.0 / (iteration + 1), 0.5)
    assert [line.split()[2] for line in _lines(log)] == ["0/100", "10/100"]  # every 10 % of the budget
    clock.now += LOG_SECONDS  # a slow iteration: a line although 13 is no multiple of 10
    progress.update(13, 0.07, 0.5)
    progress.finish(13, 0.07, 0.5)  # already shown: not again
    lines = _lines(log)
    assert [line.split()[2] for line in lines] == ["0/100", "10/100", "13/100"]
    assert lines[0] == "pgd: iter   0/100  loss 1  |grad| 5.000e-01  elapsed 0:01"
    # 13 iterations in 16 s after the first update: 1.23 s each, 87 to go; 16.5 s since the start
    assert lines[2] == "pgd: iter  13/100  loss 0.07  |grad| 5.000e-01  1.23 s/it  elapsed 0:17  left <= 1:47"
    progress.finish(14, 0.06, 0.4)  # the run is over: nothing left
    assert _lines(log)[-1].startswith("pgd: iter  14/100") and _lines(log)[-1].endswith("left <= 0:00")


def test_bar_is_redrawn_in_place_at_most_ten_times_a_second_and_fits_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    clock, terminal, log = FakeClock(), FakeTerminal(), io.StringIO()
    progress = Progress(1000, enabled=True, terminal=terminal, log=log, clock=clock)
    for iteration in range(0, 300):
        clock.now += REDRAW_SECONDS / 10
        progress.update(iteration, 0.5, 1e-3)
    progress.finish(300, 0.25, 1e-4)
    progress.finish(300, 0.25, 1e-4)
    written = terminal.getvalue()
    lines = written.split("\n")[:-1]
    assert 25 <= len(lines) <= 32 and not log.getvalue()  # 300 updates over 3 s: about 30 redraws
    assert not lines[0].startswith("\x1b") and all(line.startswith("\x1b[1A\r") for line in lines[1:])
    assert all(len(line.replace("\x1b[1A\r", "").replace("\x1b[K", "")) <= 89 for line in lines)
    assert lines[-1].count("300/1000") == 1 and "loss 0.25 " in lines[-1] and "elapsed" in lines[-1]
    assert "left" in lines[-1] and "ms/it" in lines[-1]
    monkeypatch.setenv("COLUMNS", "120")  # room for the bar
    terminal = FakeTerminal()
    progress = Progress(4, enabled=True, terminal=terminal, clock=clock)
    progress.update(2, 0.5, 1e-3)
    assert terminal.getvalue().startswith("[##########..........] 2/4 loss 0.5 ")


def test_disabled_progress_is_silent():
    terminal, log = FakeTerminal(), io.StringIO()
    progress = Progress(10, enabled=False, terminal=terminal, log=log)
    progress.update(0, 1.0, 1.0)
    progress.finish(10, 1.0, 1.0)
    assert not terminal.getvalue() and not log.getvalue()


def test_where_the_bar_goes():
    tty, pipe = FakeTerminal(), io.StringIO()
    assert terminal_stream(stderr=tty, stdout=pipe, parent=lambda: None) is tty
    # under mpirun: stdout is the launcher's pseudo-terminal, stderr a pipe; the launcher's own output decides
    assert terminal_stream(stderr=pipe, stdout=tty, parent=lambda: "/dev/pts/3") is tty
    assert terminal_stream(stderr=pipe, stdout=tty, parent=lambda: None) is None
    assert terminal_stream(stderr=pipe, stdout=pipe, parent=lambda: "/dev/pts/3") is None


def _children(pid: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as handle:
            children = [int(child) for child in handle.read().split()]
        if children:
            return children
        time.sleep(0.01)
    raise AssertionError(f"process {pid} started no child")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="needs Linux /proc")
def test_parent_terminal_reads_the_output_of_the_launcher():
    launcher_tty, launcher_side = pty.openpty()
    rank_tty, rank_side = pty.openpty()
    rank_device = os.ttyname(rank_side)
    # a launcher writing to a terminal starts a shell writing to the rank's pseudo-terminal
    launcher = subprocess.Popen(["bash", "-c", f"sleep 30 > {rank_device} & wait"], stdout=launcher_side)
    on_pipe = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE)
    shell = None
    try:
        (shell,) = _children(launcher.pid)
        assert parent_terminal(shell, own=rank_device) == os.ttyname(launcher_side)  # the shell is skipped
        assert parent_terminal(launcher.pid, own=rank_device) == os.ttyname(launcher_side)
        assert parent_terminal(on_pipe.pid, own=rank_device) is None
    finally:
        if shell is not None:
            os.kill(shell, signal.SIGKILL)
        for child in (launcher, on_pipe):
            child.kill()
            child.wait()
        for fd in (launcher_tty, launcher_side, rank_tty, rank_side):
            os.close(fd)


def _read_all(fd: int, process, timeout: float) -> bytes:
    """Everything written to a pseudo-terminal until the process ends (or ``timeout``)."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


def _open_mpi() -> bool:
    version = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True, timeout=30)
    return "Open MPI" in version.stdout + version.stderr


@pytest.mark.mpi
@needs_mpirun
@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="needs Linux /proc")
def test_live_bar_on_rank_0_under_mpirun_in_a_terminal(tmp_path):
    """mpirun with a pseudo-terminal as its output (as in an interactive shell): rank 0 draws the bar on its
    standard output, redrawn line by line; no log lines; the last iterate once."""
    if not _open_mpi():
        pytest.skip("the pseudo-terminal per rank is Open MPI's")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    data = write_dataset(tmp_path / "d.h5", X, X @ np.ones(3))
    leader, follower = pty.openpty()
    command = [MPIRUN, *MPIRUN_FLAGS, "-n", "2", sys.executable, "-m", "pgd", "train", data, "--loss", "squared",
               "--solver", "iterative", "--optimizer", "gd", "--max-iter", "40", "--tol", "0", "--rtol", "0",
               "--lr", "0.01"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               env=dict(os.environ, PGD_BLAS_THREADS="1", COLUMNS="120"))
    os.close(follower)
    try:
        output = _read_all(leader, process, timeout=120).decode(errors="replace")
    finally:
        os.close(leader)
        process.kill()
        process.wait()
    assert process.returncode == 0, output
    assert "pgd: iter" not in output  # a bar, not log lines
    bar_lines = [line for line in output.split("\n") if "elapsed" in line]
    assert bar_lines[0].startswith("[....................] 0/40 loss ")
    assert bar_lines[-1].startswith("\x1b[1A\r[####################] 40/40 loss ")
    assert all(line.startswith("\x1b[1A\r") for line in bar_lines[1:])  # in place: one line on the screen
    assert bar_lines[-1].endswith("elapsed, <=0:00 left\x1b[K\r")
    assert "stopped after 40 iterations" in output
