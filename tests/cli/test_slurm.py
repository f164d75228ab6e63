"""jobs/ on a real single-node Slurm (jobs/testing/local-slurm.sh), submitted as a user would.

USR1 before the time limit -> checkpoint -> exit 75 -> requeue -> resume gives an uninterrupted run's
model bit for bit; ``scancel`` cancels (checkpoint kept, nothing requeued); ``scontrol requeue`` and a
preemption by a higher-priority partition are resumed without a second requeue; the restart bound; a
killed rank ends the step and the job; ``srun`` and ``mpirun`` agree in ``pgd info``; the scaling
scripts. A requeued job waits for its begin time: the tests move it to now instead of sleeping.

Conventions
- The module fixture starts the cluster (the script installs Slurm where it is missing) and stops it
  afterwards if it was not running before. Where the script cannot start it (not root, no apt-get,
  another Slurm here), every test is skipped with the script's one-line reason.
- ``PGD_TEST_SLURM=off`` skips these tests; ``PGD_TEST_SLURM=require`` (``make test-slurm``) makes a
  cluster that does not start an error instead of a skip.
- Every wait polls with a deadline; every command has a timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from pgd.outputs.checkpoint import read_checkpoint
from support import ROOT
from support.files import read_weights, write_dataset
from support.mpi import BIN_DIR, MPIRUN, MPIRUN_FLAGS

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]  # the first test's includes the start

JOBS = os.path.join(ROOT, "jobs")
LOCAL_SLURM = os.path.join(JOBS, "testing", "local-slurm.sh")
START_TIMEOUT = 240  # seconds: a cold start installs the packages (about 20 s here)
WAIT = 90  # seconds for any one job transition
SLOW = "0.05"  # PGD_TEST_SLEEP_PER_ITER: seconds per iteration, so signals land mid-run
# plain gradient descent on the collinear data below: thousands of iterations from convergence, so every run
# takes exactly --max-iter iterations (or runs until it is stopped); little output
TRAIN_ARGS = "--optimizer gd --tol 0 --rtol 0 --log-every 1000"
NOISE = ("Sorry!", "find-available", ".txt: No such file")  # PMIx/Open MPI boxes without their help files


def _local_slurm(action: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LOCAL_SLURM, action], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm():
    """The environment to run Slurm's commands in (SLURM_CONF, the venv's pgd first on PATH)."""
    mode = os.environ.get("PGD_TEST_SLURM", "auto")
    if mode == "off":
        pytest.skip("PGD_TEST_SLURM=off")
    was_running = _local_slurm("status").returncode == 0
    try:
        started = _local_slurm("start", timeout=START_TIMEOUT)
        reason = (started.stderr.strip() or started.stdout.strip() or "no output").splitlines()[-1]
        ok = started.returncode == 0
    except subprocess.TimeoutExpired:
        ok, reason = False, f"local-slurm.sh start did not finish within {START_TIMEOUT} s"
    if not ok:
        if mode == "require":
            pytest.fail(reason)
        pytest.skip(reason)
    conf = _local_slurm("env").stdout.strip().split("=", 1)[1]
    env = dict(os.environ, SLURM_CONF=conf, PGD_BLAS_THREADS="1",
               PATH=os.pathsep.join([BIN_DIR, os.environ.get("PATH", "")]))
    yield env
    if not was_running:
        _local_slurm("stop")


def _run(env, *command, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done


_SUBMITTED: list[tuple[dict, str]] = []  # (environment, job id) of this test's jobs


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs():
    """A test that fails half-way leaves no job behind to hold the node."""
    yield
    for env, job_id in _SUBMITTED:
        subprocess.run(["scancel", job_id], env=env, capture_output=True, timeout=30)
    _SUBMITTED.clear()


def _sbatch(env, tmp, script, *options, **params) -> str:
    """Submit ``jobs/SCRIPT`` from the checkout with ``--export=ALL,NAME=value,...``; the job id."""
    export = ",".join(["ALL"] + [f"{name}={value}" for name, value in params.items()])
    done = _run(env, "sbatch", "--parsable", f"--output={tmp}/job-%j.out", f"--export={export}", *options,
                os.path.join(JOBS, script))
    job_id = done.stdout.strip().split(";")[0]
    _SUBMITTED.append((env, job_id))
    return job_id


def _job(env, job_id) -> dict:
    """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
    line = _run(env, "scontrol", "--oneliner", "show", "job", job_id).stdout
    return dict(re.findall(r"(?:^|\s)([^\s=]+)=(\S*)", line))


def _wait(what: str, condition, timeout: float = WAIT):
    """Poll ``condition()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


def _wait_state(env, job_id, *states, restarts: int | None = None, timeout: float = WAIT) -> dict:
    def reached():
        job = _job(env, job_id)
        return job if job["JobState"] in states and restarts in (None, int(job["Restarts"])) else None
    return _wait(f"job {job_id} to be {'/'.join(states)}", reached, timeout)


def _release(env, job_id) -> None:
    """Start a requeued job now instead of at its begin time (SLURM delays requeued jobs).

    Not within the second of the requeue (the job's SubmitTime): slurmd refuses a start whose credential
    is from the second in which it revoked the previous one ("Job credential revoked"; the job fails).
    """
    requeued = time.mktime(time.strptime(_job(env, job_id)["SubmitTime"], "%Y-%m-%dT%H:%M:%S"))
    time.sleep(max(0.0, requeued + 2 - time.time()))
    _run(env, "scontrol", "update", f"jobid={job_id}", "StartTime=now")


def _checkpoint_iteration(path) -> int:
    """The iteration of the checkpoint at ``path`` (0 while there is none)."""
    try:
        return read_checkpoint(str(path))["iteration"] if os.path.exists(path) else 0
    except Exception:  # noqa: BLE001 - being replaced this instant: ask again
        return 0


def _output(tmp, job_id) -> str:
    with open(tmp / f"job-{job_id}.out", encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture
def train(slurm, tmp_path):
    """Submits jobs/train.sbatch on 2 tasks of the node: ``train(**params) -> job id``, with the paths."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((240, 1))  # two nearly equal columns: badly conditioned; noisy labels
    X = np.hstack([z, z + 1e-3 * rng.standard_normal((240, 1)), rng.standard_normal((240, 2))])
    y = (rng.random(240) < 1 / (1 + np.exp(-(X[:, 0] + X[:, 2])))).astype(float)
    data = write_dataset(tmp_path / "d.h5", X, y)

    def submit(*options, slow: bool = True, **params) -> str:
        params = dict(dict(DATA=data, LOSS="logistic", MAX_ITER=40, OUT=tmp_path / "model.h5",
                           CHECKPOINT=tmp_path / "ck.h5", CHECKPOINT_EVERY=5, PGD_ARGS=TRAIN_ARGS,
                           PGD_TEST_SLEEP_PER_ITER=SLOW if slow else "0"), **params)
        return _sbatch(slurm, tmp_path, "train.sbatch", "--nodes=1", "--ntasks-per-node=2",
                       *(options or ["--time=00:05:00"]), **params)

    submit.env, submit.tmp, submit.ck, submit.model = slurm, tmp_path, tmp_path / "ck.h5", tmp_path / "model.h5"
    return submit


def _assert_clean(text: str) -> None:
    assert not any(noise in text for noise in NOISE), text
    assert "Traceback" not in text, text


def test_usr1_requeues_and_the_resumed_model_equals_an_uninterrupted_one(train):
    env, tmp = train.env, train.tmp
    job = train(MAX_RESTARTS=1)
    _wait("the first checkpoint", lambda: _checkpoint_iteration(train.ck))
    _run(env, "scancel", "--signal=USR1", "--batch", job)  # what --signal=B:USR1@120 sends before the limit
    _wait_state(env, job, "PENDING", restarts=1)
    stopped_at = _checkpoint_iteration(train.ck)
    assert 0 < stopped_at < 40 and not train.model.exists()
    _release(env, job)
    assert _wait_state(env, job, "COMPLETED", "FAILED", "CANCELLED")["JobState"] == "COMPLETED", _output(tmp, job)
    out = _output(tmp, job)
    assert "USR1 (time limit near)" in out and "requeueing (restart 1)" in out
    assert f"stopped: signal SIGUSR1 at iteration {stopped_at}" in out
    assert f"resuming from {train.ck} at iteration {stopped_at}" in out
    assert "start 2 of at most 2" in out
    _assert_clean(out)
    # the same job, never interrupted
    whole = train(slow=False, OUT=tmp / "whole.h5", CHECKPOINT=tmp / "whole-ck.h5")
    assert _wait_state(env, whole, "COMPLETED", "FAILED")["JobState"] == "COMPLETED", _output(tmp, whole)
    w_whole, b_whole, attrs = read_weights(tmp / "whole.h5")
    w_res, b_res, _ = read_weights(train.model)
    assert attrs["iterations"] == 40
    assert np.array_equal(w_whole, w_res) and b_whole == b_res
    with h5py.File(tmp / "whole.h5") as a, h5py.File(train.model) as b:
        assert np.array_equal(a["history/loss"][...], b["history/loss"][...])


def test_scancel_cancels_and_keeps_the_checkpoint(train):
    env, tmp = train.env, train.tmp
    job = train(MAX_ITER=100000)
    _wait("the first checkpoint", lambda: _checkpoint_iteration(train.ck))
    _run(env, "scancel", job)
    state = _wait_state(env, job, "CANCELLED", "PENDING", "COMPLETED", "FAILED")
    out = _output(tmp, job)
    assert state["JobState"] == "CANCELLED" and state["Restarts"] == "0", out
    _wait("the batch script's last line", lambda: "pgd job: stopped with a checkpoint" in _output(tmp, job))
    out = _output(tmp, job)
    assert "not requeued: after TERM" in out and "requeueing" not in out
    assert "stopped: signal SIGTERM" in out
    assert _checkpoint_iteration(train.ck) > 0 and not train.model.exists()
    assert _job(env, job)["JobState"] == "CANCELLED"


def test_slurm_requeue_and_preemption_resume_without_a_second_requeue(train):
    env, tmp = train.env, train.tmp
    job = train(MAX_ITER=60, MAX_RESTARTS=2)
    _wait("the first checkpoint", lambda: _checkpoint_iteration(train.ck))
    _run(env, "scontrol", "requeue", job)  # SLURM requeues; the script must not requeue again
    _wait_state(env, job, "PENDING", restarts=1)
    first = _checkpoint_iteration(train.ck)
    _release(env, job)
    _wait("a checkpoint of the second start", lambda: _checkpoint_iteration(train.ck) > first)
    # a job in the higher-priority partition preempts it: SLURM signals the steps (grace time), pgd stops
    # with a checkpoint, and the script requeues the job before the grace time ends
    urgent = _sbatch(env, tmp, "train.sbatch", "--partition=urgent",
                     "--nodes=1", "--ntasks-per-node=2", "--time=00:05:00", DATA=tmp / "d.h5",
                     MAX_ITER=1, OUT=tmp / "urgent.h5", CHECKPOINT=tmp / "urgent-ck.h5", PGD_ARGS=TRAIN_ARGS)
    _wait_state(env, job, "PENDING", restarts=2)
    second = _checkpoint_iteration(train.ck)
    assert 0 < first < second < 60
    assert _wait_state(env, urgent, "COMPLETED", "FAILED")["JobState"] == "COMPLETED", _output(tmp, urgent)
    _release(env, job)
    assert _wait_state(env, job, "COMPLETED", "FAILED")["JobState"] == "COMPLETED", _output(tmp, job)
    out = _output(tmp, job)
    assert "not requeued: after TERM" in out  # scontrol requeue
    assert "(preempted); requeueing (restart 2)" in out
    assert f"at iteration {first}" in out and f"at iteration {second}" in out
    assert read_weights(train.model)[2]["iterations"] == 60
    assert _job(env, job)["Restarts"] == "2"


def test_the_time_limit_signal_and_the_restart_bound(train):
    env, tmp = train.env, train.tmp
    # the real thing: SLURM itself sends USR1 to the batch shell. Its time-limit check runs every 30 s and
    # sends the signal at the first check less than 80 + 30 s before the 2 minute limit: 10 to 40 s after
    # the start (due earlier, it could reach the node while the batch script starts, and be lost)
    job = train("--time=00:02:00", "--signal=B:USR1@80", MAX_ITER=100000, MAX_RESTARTS=0)
    state = _wait_state(env, job, "FAILED", "COMPLETED", "TIMEOUT", timeout=150)
    out = _output(tmp, job)
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "75:0" and state["Restarts"] == "0", out
    assert "USR1 (time limit near)" in out and "MAX_RESTARTS=0 is reached" in out
    assert _checkpoint_iteration(train.ck) > 0
    # requeued anyway (by hand): the start past the bound gives up at once
    _run(env, "scontrol", "requeue", job)
    _wait_state(env, job, "PENDING", restarts=1)
    _release(env, job)
    state = _wait_state(env, job, "FAILED", "COMPLETED", restarts=1)
    assert state["ExitCode"] == "1:0", _output(tmp, job)
    assert "already restarted 1 times (MAX_RESTARTS=0): giving up" in _output(tmp, job)


def test_a_killed_rank_ends_the_step_and_the_job(train):
    env, tmp = train.env, train.tmp
    job = train(MAX_ITER=100000)
    _wait("the first checkpoint", lambda: _checkpoint_iteration(train.ck))
    # PID JOBID STEPID LOCALID GLOBALID: rank 1 of step 0
    table = _run(env, "scontrol", "listpids", job).stdout.split("\n")[1:]
    rank1 = [int(row.split()[0]) for row in table if row.split()[2:5] == ["0", "1", "1"]]
    assert len(rank1) == 1, table
    os.kill(rank1[0], 9)
    state = _wait_state(env, job, "FAILED", "COMPLETED", "CANCELLED", "PENDING")
    out = _output(tmp, job)
    assert state["JobState"] == "FAILED" and state["ExitCode"] != "0:0" and state["Restarts"] == "0", out
    assert "task 1: Killed" in out and "pgd job: the pgd step failed (exit code" in out
    assert "requeueing" not in out
    assert _checkpoint_iteration(train.ck) > 0 and not train.model.exists()


@pytest.mark.mpi
def test_srun_and_mpirun_agree_and_the_step_output_is_clean(slurm):
    # the cluster offers munge security as a real one does: the case that made PMIx print its boxes
    offered = _run(slurm, "srun", "--mpi=pmix", "-n", "1", "printenv", "PMIX_SECURITY_MODE").stdout
    assert "munge" in offered
    step = f'source {JOBS}/pgd_step_env.sh && pgd_step_env && exec srun --mpi=pmix -n 2 pgd info --json'
    under_srun = _run(slurm, "bash", "-c", step)
    _assert_clean(under_srun.stderr)
    if MPIRUN is None:
        pytest.skip("mpirun not found")
    under_mpirun = _run(slurm, MPIRUN, *MPIRUN_FLAGS, "-n", "2", sys.executable, "-m", "pgd", "info", "--json")
    srun_info, mpirun_info = json.loads(under_srun.stdout), json.loads(under_mpirun.stdout)
    for key in ("world_size", "nodes", "ranks_per_node", "mpi_library"):
        assert srun_info[key] == mpirun_info[key], key
    assert srun_info["world_size"] == 2


@pytest.mark.parametrize("kind", ["strong", "weak"])
def test_scaling_sbatch(slurm, tmp_path, kind):
    job = _sbatch(slurm, tmp_path, f"scaling_{kind}.sbatch", "--nodes=1", "--ntasks-per-node=2", "--time=00:05:00",
                  RANKS="1:2", N=200, D=4, OUT_DIR=tmp_path / "out",
                  BENCH_ARGS="--warmup 1 --repeats 1 --iters 2 --no-plot")
    state = _wait_state(slurm, job, "COMPLETED", "FAILED", "CANCELLED")
    out = _output(tmp_path, job)
    assert state["JobState"] == "COMPLETED", out
    _assert_clean(out)
    with open(tmp_path / "out" / "results.json", encoding="utf-8") as handle:
        results = json.load(handle)
    assert results["meta"]["launcher"] == "srun"
    assert [row["ranks"] for row in results["rows"]] == [1, 2]
    assert [row["n"] for row in results["rows"]] == ([200, 200] if kind == "strong" else [200, 400])
