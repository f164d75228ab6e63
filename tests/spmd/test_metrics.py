"""Metrics against direct numpy formulas, and the MPI versions under mpirun."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from pgd.evaluation.metrics import classification_metrics, distributed_roc_auc, regression_metrics
from support import script
from support.mpi import mpirun_command, needs_mpirun

REPO = Path(__file__).resolve().parents[2]
COMM = MPI.COMM_SELF


def brute_force_auc(scores, labels):
    """Mann-Whitney U by counting every (positive, negative) pair; ties count one half."""
    positives, negatives = scores[labels == 1], scores[labels != 1]
    if positives.size == 0 or negatives.size == 0:
        return math.nan
    difference = positives[:, None] - negatives[None, :]
    return ((difference > 0).sum() + 0.5 * (difference == 0).sum()) / difference.size


def test_regression_metrics_match_numpy():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(200)
    z = y + 0.3 * rng.standard_normal(200)
    got = regression_metrics(y.astype(np.float32), z.astype(np.float32), COMM)
    y, z = y.astype(np.float32).astype(np.float64), z.astype(np.float32).astype(np.float64)
    mse = np.mean((z - y) ** 2)
    assert got["n"] == 200
    assert got["mse"] == pytest.approx(mse, rel=1e-12)
    assert got["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(z - y)), rel=1e-12)
    assert got["r2"] == pytest.approx(1 - mse / np.var(y), rel=1e-12)


def test_regression_metrics_undefined_cases():
    empty = regression_metrics(np.empty(0), np.empty(0), COMM)
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mse", "rmse", "mae", "r2"))
    constant = regression_metrics(np.ones(5), np.zeros(5), COMM)
    assert constant["mse"] == 1.0 and math.isnan(constant["r2"])


def test_classification_metrics_match_numpy():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.3).astype(np.float64)
    z = 2 * y - 1 + rng.standard_normal(300)
    z[:3] = [1e4, -1e4, 0.0]  # extreme logits stay finite
    got = classification_metrics(y, z, COMM)
    p = 1 / (1 + np.exp(-np.clip(z, -500, 500)))
    with np.errstate(divide="ignore"):
        terms = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    terms[np.isinf(terms)] = 1e4  # the two extreme rows: loss = |z| when wrong, 0 when right
    assert got["n"] == 300
    assert got["log_loss"] == pytest.approx(terms.mean(), rel=1e-10)
    assert got["accuracy"] == pytest.approx(np.mean((z >= 0) == (y == 1)), rel=1e-12)
    assert got["positive_rate"] == pytest.approx(y.mean(), rel=1e-12)
    assert got["predicted_positive_rate"] == pytest.approx(np.mean(z >= 0), rel=1e-12)
    assert got["roc_auc"] == brute_force_auc(z, y)
    stricter = classification_metrics(y, z, COMM, threshold=0.9)
    assert stricter["predicted_positive_rate"] == pytest.approx(np.mean(p >= 0.9), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(-3, 3), min_size=0, max_size=40),
    label_bits=st.integers(0, 2**40 - 1),
)
def test_roc_auc_matches_pair_counting(scores, label_bits):
    scores = np.array(scores, dtype=np.float64)
    labels = np.array([(label_bits >> i) & 1 for i in range(scores.size)], dtype=np.int64)
    got, want = distributed_roc_auc(scores, labels, COMM), brute_force_auc(scores, labels)
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-15)


def test_roc_auc_simple_values():
    assert distributed_roc_auc(np.array([0.1, 0.9]), np.array([0, 1]), COMM) == 1.0
    assert distributed_roc_auc(np.array([0.9, 0.1]), np.array([0, 1]), COMM) == 0.0
    assert distributed_roc_auc(np.array([0.5, 0.5]), np.array([0, 1]), COMM) == 0.5
    assert math.isnan(distributed_roc_auc(np.array([0.5, 0.7]), np.array([1, 1]), COMM))


@pytest.mark.mpi
@needs_mpirun
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_distributed_metrics_equal_serial_under_mpirun(ranks):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        mpirun_command(ranks, sys.executable, script("mpi_auc_check.py")),
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
