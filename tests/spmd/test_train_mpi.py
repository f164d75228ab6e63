"""End-to-end training under mpirun against float64 serial references (1, 2 and 3 ranks), on NumPy and on the
fake CuPy (the GPU path's host code: ``support.mpi.BACKENDS``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import script
from support.files import read_weights, write_dataset
from support.mpi import BACKENDS, run_pgd, run_python

pytestmark = pytest.mark.mpi

TIGHT = ["--dtype", "float64", "--tol", "1e-11", "--rtol", "0", "--max-iter", "20000", "--quiet"]


def _regression(n=301, d=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + 0.3
    y = X @ rng.standard_normal(d) + 1.5 + 0.1 * rng.standard_normal(n)
    return X, y


def _binary(n=400, d=5, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    p = 1 / (1 + np.exp(-(X @ rng.standard_normal(d) * 0.8 - 0.3)))
    return X, (rng.random(n) < p).astype(np.float64)


def ridge_reference(X, y, l2):
    """Closed form of min (1/2n)‖Xw + b − y‖² + (λ/2)‖w‖² with an unpenalised intercept."""
    n = len(y)
    Xc, yc = X - X.mean(0), y - y.mean()
    w = np.linalg.solve(Xc.T @ Xc / n + l2 * np.eye(X.shape[1]), Xc.T @ yc / n)
    return w, y.mean() - X.mean(0) @ w


def logistic_reference(X, y, l2):
    """Newton's method in float64 to machine precision (the serial reference)."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.diag([l2] * d + [0.0])
    for _ in range(100):
        p = 1 / (1 + np.exp(-(A @ theta)))
        grad = A.T @ (p - y) / n + penalty @ theta
        hess = (A * (p * (1 - p))[:, None]).T @ A / n + penalty
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.linalg.norm(step) < 1e-15:
            break
    return theta[:d], theta[d]


def _relative_error(w, b, w_ref, b_ref):
    got, ref = np.append(w, b), np.append(w_ref, b_ref)
    return np.linalg.norm(got - ref) / np.linalg.norm(ref)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    Xr, yr = _regression()
    Xb, yb = _binary()
    return {"regression": (write_dataset(root / "reg.h5", Xr, yr), Xr, yr),
            "binary": (write_dataset(root / "bin.h5", Xb, yb), Xb, yb), "root": root}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("comm", ["allreduce", "reduce-bcast"])
def test_least_squares_matches_lstsq(datasets, ranks, comm, backend):
    path, X, y = datasets["regression"]
    out = datasets["root"] / f"ls-{ranks}-{comm}-{backend}.h5"
    device, env = BACKENDS[backend]
    result = run_pgd(ranks, "train", path, "--loss", "squared", "--comm", comm, "--out", out, *TIGHT, *device,
                     env={"PGD_CHECK_REPLICAS": "1", **env})
    assert result.returncode == 0, result.stderr
    w, b, attrs = read_weights(out)
    A = np.hstack([X, np.ones((len(y), 1))])
    reference = np.linalg.lstsq(A, y, rcond=None)[0]
    assert _relative_error(w, b, reference[:-1], reference[-1]) < 1e-6
    assert attrs["ranks"] == ranks and attrs["communicator"] == comm
    assert attrs["replicas_identical"] and attrs["replicas_checked"] == "every iteration"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_ridge_matches_closed_form(datasets, ranks, backend):
    path, X, y = datasets["regression"]
    out = datasets["root"] / f"ridge-{ranks}-{backend}.h5"
    device, env = BACKENDS[backend]
    result = run_pgd(ranks, "train", path, "--loss", "squared", "--l2", "0.5", "--out", out, *TIGHT, *device,
                     env=env)
    assert result.returncode == 0, result.stderr
    w, b, _ = read_weights(out)
    assert _relative_error(w, b, *ridge_reference(X, y, 0.5)) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_logistic_matches_newton_reference(datasets, ranks, l2, backend):
    path, X, y = datasets["binary"]
    out = datasets["root"] / f"log-{ranks}-{l2}-{backend}.h5"
    device, env = BACKENDS[backend]
    result = run_pgd(ranks, "train", path, "--loss", "logistic", "--l2", l2, "--out", out, *TIGHT, *device, env=env)
    assert result.returncode == 0, result.stderr
    w, b, attrs = read_weights(out)
    assert _relative_error(w, b, *logistic_reference(X, y, l2)) < 1e-5
    assert attrs["converged"]
    assert attrs["device"] == ("gpu (cupy)" if backend == "fake-cupy" else "cpu (numpy)")


def test_no_intercept_and_reduce_bcast_equal_allreduce(datasets):
    path, X, y = datasets["regression"]
    outs = []
    for comm in ("allreduce", "reduce-bcast"):
        outs.append(datasets["root"] / f"noint-{comm}.h5")
        result = run_pgd(3, "train", path, "--loss", "squared", "--no-fit-intercept", "--comm", comm,
                         "--out", outs[-1], *TIGHT)
        assert result.returncode == 0, result.stderr
    (w1, b1, _), (w2, b2, _) = read_weights(outs[0]), read_weights(outs[1])
    assert b1 == 0.0 and b2 == 0.0
    np.testing.assert_allclose(w1, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-6)
    np.testing.assert_allclose(w1, w2, rtol=1e-12)


def test_more_ranks_than_rows_equals_serial(tmp_path):
    X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3], [2.0, 1.0]])
    y = np.array([1.0, 0.0, -2.0, 3.5])
    path = write_dataset(tmp_path / "tiny.h5", X, y)
    weights = []
    for ranks in (1, 6):
        out = tmp_path / f"tiny-{ranks}.h5"
        result = run_pgd(ranks, "train", path, "--loss", "squared", "--out", out, *TIGHT,
                         env={"PGD_CHECK_REPLICAS": "1"})
        assert result.returncode == 0, result.stderr
        w, b, attrs = read_weights(out)
        assert attrs["replicas_identical"]
        weights.append(np.append(w, b))
    reference = np.linalg.lstsq(np.hstack([X, np.ones((4, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-9)
    np.testing.assert_allclose(weights[0], reference, rtol=1e-6)


def test_outputs_metrics_history_and_summary(datasets):
    path, X, y = datasets["binary"]
    out, metrics = datasets["root"] / "full.h5", datasets["root"] / "full.jsonl"
    result = run_pgd(2, "train", path, "--loss", "logistic", "--optimizer", "gd", "--max-iter", "25", "--tol", "0",
                     "--out", out,
                     "--metrics", metrics, "--log-every", "5", env={"PGD_LR": "2.0"})
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(26))
    assert all(b["loss"] <= a["loss"] for a, b in zip(records, records[1:]))
    w, b, attrs = read_weights(out)
    config = json.loads(attrs["config"])
    assert config["values"]["lr"] == 2.0 and config["sources"]["lr"] == "env"
    assert config["sources"]["max_iter"] == "flag" and config["sources"]["l2"] == "default"
    for key in ("loss", "optimizer", "iterations", "final_loss", "grad_norm", "ranks", "device",
                "communicator", "pgd_version"):
        assert key in attrs
    assert attrs["iterations"] == 25 and attrs["stop_reason"].startswith("iteration budget")
    assert "compute" in result.stdout and "communication" in result.stdout
    assert "pgd: iter  5/25" in result.stderr  # a log line every 5 iterations off a terminal
    assert result.stderr.count("iter 25/25") == 1 and "elapsed" in result.stderr  # the last line once
    import h5py

    with h5py.File(out) as handle:
        np.testing.assert_allclose(handle["history/loss"][...], [r["loss"] for r in records])


@pytest.mark.parametrize("ranks", [1, 3])
def test_summary_timing_is_one_ranks_split(ranks):
    """The wall line's parts are those of the rank that computed longest, so they add up to its wall time;
    maxima over ranks of each part did not (the waiting ranks count their wait as communication)."""
    result = run_python(ranks, script("mpi_timing_check.py"))
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == ranks
    busiest = 1 if ranks > 1 else 0
    expected = {"wall": 10.0 + 0.1 * busiest, "compute": 5.0 if ranks > 1 else 2.0,
                "comm": 4.25 if ranks > 1 else 7.75, "setup": 1.5, "compute_min": 2.0}
    for report in reports:
        split = report["split"]
        for key, value in expected.items():
            assert split[key] == pytest.approx(value), (key, split)
        assert split["compute"] + split["comm"] + split["other"] == pytest.approx(split["wall"])
        assert split["per_iteration"] == pytest.approx(split["wall"] / 4)
    line = reports[0]["line"]
    if ranks > 1:
        assert "wall 10.10 s: compute 5.00 s, communication 4.25 s, other 850.00 ms" in line
        assert "the rank that computed longest; the least compute of a rank 2.00 s" in line
    else:
        assert "wall 10.00 s: compute 2.00 s, communication 7.75 s, other 250.00 ms;" in line
