"""Stop decisions come from agreed numbers only: skewed clocks and one slow rank cannot split the ranks.

Unit tests simulate ranks in one process (their Agreement contributions summed as MPI would); the mpirun test
runs the data mode with a clock skewed by 30 s and sleeps on one rank, where the ranks once decided apart and
the job hung in 4 runs of 5.
"""

from __future__ import annotations

import signal
from types import SimpleNamespace

import numpy as np

from pgd.runtime.faults import Faults
from pgd.training.preempt import AGREEMENT_SLOTS, Agreement, DecisionSchedule, Resilience


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
