"""Asynchronous modes: parameter server with SSP (--mode async), Hogwild shared memory (--mode shm),
local SGD (--sync-every), the slow-rank option and the straggler benchmark.

The convergence problem is noise-free least squares (y = X w + b exactly, well conditioned), so the
optimum loss is 0 and every mode must end within ``TOLERANCE`` of it. Every mpirun launch has a timeout:
a hang (lost message, missed shutdown) fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import numpy as np
import pytest

from pgd.config import SlowRank, Staleness
from support.files import read_weights, write_dataset
from support.mpi import run_pgd

TOLERANCE = 1e-8  # final loss above the optimum (0) after the update budget
SHUTDOWN_SECONDS = 60  # every run, shutdown included, must end within this


@pytest.fixture(scope="module")
def exact_data(tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 8))
    y = X @ rng.standard_normal(8) + 0.25
    return write_dataset(tmp_path_factory.mktemp("async") / "exact.h5", X, y)


def _train(tmp_path, data, ranks, *options, env=None):
    out = tmp_path / f"model-{ranks}.h5"
    result = run_pgd(ranks, "train", data, "--loss", "squared", "--out", out, *options,
                     timeout=SHUTDOWN_SECONDS, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "osc_ucx" not in result.stderr and "Error" not in result.stderr  # launcher noise silenced by pgd
    return read_weights(out)[2], result.stdout


MODES = {
    "async-1-server": ("--mode", "async", "--updates", "600"),
    "async-2-servers-ssp1": ("--mode", "async", "--servers", "2", "--staleness", "1", "--updates", "600"),
    "shm": ("--mode", "shm", "--updates", "600"),
    "local-sgd": ("--mode", "data", "--sync-every", "4", "--updates", "600"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_mode_converges_to_the_optimum(tmp_path, exact_data, mode, ranks):
    if mode == "async-2-servers-ssp1" and ranks == 2:
        pytest.skip("two servers need a third rank")
    attrs, stdout = _train(tmp_path, exact_data, ranks, *MODES[mode])
    assert attrs["final_loss"] <= TOLERANCE
    assert attrs["updates"] >= 600
    assert "updates applied" in stdout


@pytest.mark.mpi
def test_staleness_bound_is_never_exceeded_and_measured(tmp_path, exact_data):
    """A slow worker makes the fast ones run ahead; the servers hold them to the bound."""
    slow = ("--mode", "async", "--slow-rank", "3:8", "--updates", "450", "--quiet")
    gaps = {}
    for bound in ("0", "2", "none"):
        attrs, _ = _train(tmp_path, exact_data, 4, *slow, "--staleness", bound)
        gaps[bound] = attrs["clock_gap_max"]
        assert attrs["staleness_max"] >= 0 and attrs["staleness_bound"] == (bound if bound == "none"
                                                                              else int(bound))
    assert gaps["0"] == 0
    assert gaps["2"] <= 2
    assert gaps["none"] > 2  # without a bound the fast workers do run ahead: the counter works


@pytest.mark.mpi
def test_shutdown_on_target_with_many_ranks(tmp_path, exact_data):
    """Five ranks, two servers, stop on the loss target: all ranks exit, the result is written."""
    attrs, stdout = _train(tmp_path, exact_data, 5, "--mode", "async", "--servers", "2",
                           "--target-loss", "1e-3", "--updates", "100000")
    assert attrs["stop_reason"].startswith("target loss reached")
    assert attrs["updates"] < 100000
    assert attrs["final_loss"] < 1e-2


@pytest.mark.mpi
def test_shm_averages_simulated_nodes(tmp_path, exact_data):
    attrs, stdout = _train(tmp_path, exact_data, 3, "--mode", "shm", "--sync-every", "3", "--updates", "600",
                           env={"PGD_SHM_NODE_RANKS": "2"})
    assert "(2 node(s))" in stdout
    assert attrs["final_loss"] <= TOLERANCE


@pytest.mark.mpi
def test_straggler_bench_reaches_the_target_asynchronously(tmp_path):
    """The straggler benchmark runs both configurations to the target; which one is faster is a measurement
    (docs/async.md), not an assertion: under load either can win."""
    result = run_pgd(4, "bench", "straggler", "--n", "3000", "--d", "60", "--bounds", "0,none",
                     "--slow-factor", "10", "--repeats", "1", "--no-plot", "--out-dir", tmp_path, "--json",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    configs = json.loads(result.stdout)["configs"]
    sync, fully_async = configs["sync (s=0)"], configs["async (s=none)"]
    assert fully_async["time_to_target"] is not None
    assert sync["clock_gap_max"] == 0 and fully_async["clock_gap_max"] > 0


def test_async_needs_more_ranks_than_servers(exact_data):
    result = subprocess.run([sys.executable, "-m", "pgd", "train", exact_data, "--loss", "squared", "--mode",
                             "async"], capture_output=True, text=True, timeout=SHUTDOWN_SECONDS)
    assert result.returncode == 2
    assert "needs more ranks than --servers 1" in result.stderr


def test_local_sgd_dry_run_shows_the_plan(exact_data):
    result = subprocess.run([sys.executable, "-m", "pgd", "train", exact_data, "--loss", "squared", "--sync-every",
                             "4", "--dry-run"], capture_output=True, text=True, timeout=SHUTDOWN_SECONDS)
    assert result.returncode == 0, result.stderr
    assert "local SGD on 1 rank(s), average every 4 steps" in result.stdout
    assert "nothing trained" in result.stdout


@pytest.mark.parametrize("text, expected", [("1:4", (1, 4.0)), ("0:1.5", (0, 1.5))])
def test_slow_rank_parses(text, expected):
    assert SlowRank().convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["1", "a:2", "1:0.5", "-1:2", "1:inf"])
def test_slow_rank_rejects(text):
    with pytest.raises(click.BadParameter):
        SlowRank().convert(text, None, None)


def test_staleness_parses():
    assert Staleness().convert("none", None, None) == "none"
    assert Staleness().convert("3", None, None) == 3
    for bad in ("-1", "x"):
        with pytest.raises(click.BadParameter):
            Staleness().convert(bad, None, None)


def test_update_budget_is_capped_by_given_epochs():
    from pgd.config import RunConfig
    from pgd.training.minibatch import update_budget

    cfg = RunConfig({"updates": 1000, "local_batch": 10, "epochs": 2}, {"epochs": "flag"})
    assert update_budget(cfg, n_global=100) == 20
    assert update_budget(cfg.replace(epochs=None), n_global=100) == 1000
    default_epochs = RunConfig({"updates": 1000, "local_batch": 10, "epochs": 2}, {"epochs": "default"})
    assert update_budget(default_epochs, n_global=100) == 1000


def test_summary_reports_updates_staleness_and_waiting():
    from pgd.outputs.progress import format_summary

    summary = {"loss": "squared", "ranks": 3, "device": "cpu", "communicator": "ps", "dtype": "float64",
               "optimizer": "sgd", "data": "x.h5", "n": 10, "d": 2, "iterations": 5, "stop_reason": "done",
               "final_loss": 0.5, "grad_norm": 0.1, "lr": 0.1, "lr_auto": False,
               "comm_bytes_per_iteration": 8,
               "timing": {"wall": 1.0, "compute": 0.5, "comm": 0.25, "other": 0.25, "per_iteration": 0.2},
               "mode": "async", "updates": 5, "staleness_max": 3, "staleness_mean": 1.5, "clock_gap_max": 1,
               "staleness_bound": 1, "wait_seconds": 0.25}
    text = format_summary(summary)
    assert "async: 5 updates applied; staleness max 3, mean 1.50 updates; clock gap max 1 (bound 1)" in text
    assert "waiting 250.00 ms" in text


def test_slow_rank_hook_stretches_only_the_named_rank():
    from types import SimpleNamespace

    from pgd.config import RunConfig
    from pgd.training.slow_rank import make_slow_rank_hook

    objective = SimpleNamespace(compute_seconds=0.0)
    optimizer = SimpleNamespace(objective=objective)
    cfg = RunConfig({"slow_rank": (1, 3.0)})
    assert make_slow_rank_hook(cfg, SimpleNamespace(Get_rank=lambda: 0), optimizer) is None
    hook = make_slow_rank_hook(cfg, SimpleNamespace(Get_rank=lambda: 1), optimizer)
    objective.compute_seconds = 0.01
    assert hook.after_step(1) is None
    assert objective.compute_seconds == pytest.approx(0.03)
    objective.compute_seconds += 0.01  # the next step's own compute
    hook.after_step(2)
    assert objective.compute_seconds == pytest.approx(0.06)
