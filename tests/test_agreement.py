"""Stop decisions come from agreed numbers only: skewed clocks and one slow rank cannot split the ranks.

Unit tests simulate ranks in one process (their Agreement contributions summed as MPI would); the mpirun test
runs the data mode with a clock skewed by 30 s and sleeps on one rank, where the ranks once decided apart and
the job hung in 4 runs of 5.
"""

from __future__ import annotations

import signal
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import assert_one_error_line, read_weights, run_cases, write_dataset
from pgd.runtime.faults import Faults
from pgd.training.preempt import (
    AGREEMENT_SLOTS,
    Agreement,
    DecisionSchedule,
    Resilience,
)


class _Rank:
    def __init__(self, rank):
        self.rank = rank

    def Get_rank(self):  # noqa: N802 - mpi4py's name
        return self.rank


def _ranks(skews, signums=(0, 0, 0)):
    agreements = []
    for rank, skew in enumerate(skews):
        faults = Faults(rank, {"PGD_TEST_CLOCK_SKEW": f"{rank}:{skew}"})
        agreements.append(Agreement(_Rank(rank), SimpleNamespace(signum=signums[rank]), faults))
    return agreements


def _agree(agreements):
    parts = np.zeros((len(agreements), AGREEMENT_SLOTS))
    for agreement, part in zip(agreements, parts):
        agreement.contribute(part)
    summed = parts.sum(axis=0)
    for agreement in agreements:
        agreement.accept(summed.copy())


def test_every_rank_reads_rank_0s_clock_bit_for_bit():
    agreements = _ranks([0.0, 3600.0, -50.0], signums=(0, 0, signal.SIGUSR1))
    agreements[0].checkpoint_seconds_here = 0.25
    agreements[1].checkpoint_seconds_here = 99.0  # not rank 0's: never counts
    for _ in range(3):
        _agree(agreements)
    first = agreements[0]
    for other in agreements[1:]:
        assert (other.elapsed, other.slowest, other.checkpoint_seconds, other.signum) == \
               (first.elapsed, first.slowest, first.checkpoint_seconds, first.signum)
    assert first.elapsed < 3600 and first.checkpoint_seconds == 0.25 and first.signum == signal.SIGUSR1


def test_time_budget_decision_is_the_same_on_every_rank(monkeypatch):
    cfg = SimpleNamespace(checkpoint=None, max_time=10.0, checkpoint_every=0, checkpoint_seconds=0.0)
    resiliences = []
    for rank, skew in enumerate([0.0, 1000.0]):
        resilience = Resilience(cfg, _Rank(rank), state=None)
        resilience.agreement.faults = Faults(rank, {"PGD_TEST_CLOCK_SKEW": f"{rank}:{skew}"})
        resiliences.append(resilience)
    clock = iter([1.0, 2.0, 3.0, 5.5, 7.0, 8.0])
    agreements = [r.agreement for r in resiliences]
    decisions = []
    for _ in range(6):
        now = next(clock)
        for agreement in agreements:
            agreement.started = 0.0
            monkeypatch.setattr(agreement.faults, "clock", lambda now=now, skew=agreement.faults.skew: now + skew)
        _agree(agreements)
        decisions.append([r._stop_reason(None) for r in resiliences])
    for resilience in reversed(resiliences):  # each gives back the handler it found
        resilience.close()
    assert all(a == b for a, b in decisions)
    assert [a is not None for a, _ in decisions] == [False, False, False, True, True, True]  # 5.5 + 2·2.5 >= 10


def test_decision_schedule_spacing():
    schedule = DecisionSchedule(step=0, elapsed=0.0, seconds=0.5)
    assert schedule.next == 1
    schedule.advance(1, 0.001)  # fast steps: at most twice as far each time
    assert schedule.next == 3
    schedule.advance(3, 0.002)
    assert schedule.next == 7
    schedule.advance(7, 4.002)  # slow steps (1 s each): every step
    assert schedule.next == 8


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_max_time_with_skewed_clocks_and_a_slow_rank_never_hangs(tmp_path, ranks):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    data = write_dataset(tmp_path / "d.h5", X, (X @ rng.standard_normal(5) > 0).astype(float))
    train = ["train", data, "--loss", "logistic", "--optimizer", "gd", "--lr", "0.1", "--max-iter", 10 ** 8,
             "--tol", 0, "--rtol", 0,
             "--quiet", "--max-time", 1.5]
    skew = {"PGD_TEST_CLOCK_SKEW": "1:30", "PGD_TEST_SLEEP_PER_ITER": "1:0.004"}
    cases = [
        {"args": [*train, "--out", tmp_path / "m.h5"], "env": skew},
        {"args": [*train, "--checkpoint", tmp_path / "ck.h5", "--checkpoint-every", 7, "--out", tmp_path / "x.h5"],
         "env": {"PGD_TEST_CLOCK_SKEW": f"{ranks - 1}:-20", "PGD_TEST_SLEEP_PER_ITER": "0:0.004"}},
    ]
    budget, checkpointed = run_cases(ranks, cases, tmp_path, timeout=90)
    assert budget["codes_by_rank"] == [0] * ranks, budget["stderr"]
    _, _, attrs = read_weights(tmp_path / "m.h5")
    assert attrs["stop_reason"].startswith("time budget --max-time 1.5 s nearly used")
    assert attrs["converged"] == (attrs["optimality"] <= attrs["optimality_target"])  # a time stop claims nothing
    assert attrs["iterations"] > 1
    line = assert_one_error_line(dict(checkpointed, stderr=checkpointed["stderr"].replace("pgd: stopped",
                                                                                          "pgd: error")),
                                 "time budget --max-time 1.5 s nearly used", code=75)
    assert "checkpoint" in line and not (tmp_path / "x.h5").exists()
