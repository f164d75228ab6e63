"""The agreement under mpirun: ``--max-time`` with skewed clocks and a slow rank never hangs (moved from
tests/unit/test_agreement.py, whose other tests simulate the ranks in one process)."""

from __future__ import annotations

import numpy as np
import pytest

from support.files import assert_one_error_line, read_weights, write_dataset
from support.mpi import run_cases


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
