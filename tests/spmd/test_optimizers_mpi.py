"""Every optimizer under mpirun with 1, 2 and 3 ranks against float64 serial references (one launch each).

Tolerances (max-abs error of ``[w, b]`` against the reference optimum; data are standardised-scale,
well-conditioned, float64):

- deterministic methods (gd, gd + line search, momentum, nesterov, lbfgs) stopped at the optimality
  test with tol 1e-9: 1e-6;
- the Gram solver (normal equations): 1e-10;
- adam (lr 0.02, stopped at ‖∇f‖ ≤ 1e-7 or 4000 steps): 1e-4;
- sgd (batch 60 of 300 rows, 60 epochs, inverse-time schedule): 2e-2, and loss sub-optimality ≤ 1e-3
  (relative).
"""

from __future__ import annotations

import numpy as np
import pytest

from support import script
from support.files import write_dataset
from support.mpi import results_by_ranks

SCRIPT = script("mpi_optimizers_check.py")
TOLERANCE = {"adam": 1e-4, "sgd": 2e-2}
DEFAULT_TOLERANCE = 1e-6


def make_problems(workdir):
    """Write reg.h5, bin.h5 (300 x 5) and sparse.h5 (400 x 20, 4 true non-zeros); returns the true sparse w."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 5))
    w = np.array([1.0, -2.0, 0.5, 0.0, 1.5])
    write_dataset(workdir / "reg.h5", X, X @ w + 0.3 + 0.1 * rng.standard_normal(300))
    labels = (rng.random(300) < 1 / (1 + np.exp(-(X @ (0.7 * w) - 0.2)))).astype(np.float64)
    write_dataset(workdir / "bin.h5", X, labels)
    Xs = rng.standard_normal((400, 20))
    w_sparse = np.zeros(20)
    w_sparse[[2, 7, 11, 16]] = [2.0, -1.5, 1.0, 3.0]
    write_dataset(workdir / "sparse.h5", Xs, Xs @ w_sparse + 0.5 + 0.01 * rng.standard_normal(400))
    return w_sparse


def reference(X, y, loss: str, l2: float) -> np.ndarray:
    """Float64 optimum ``[w, b]``: normal equations (squared) or Newton's method (logistic)."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    penalty = np.diag([l2] * d + [0.0])
    if loss == "squared":
        return np.linalg.solve(A.T @ A / n + penalty, A.T @ y / n)
    params = np.zeros(d + 1)
    for _ in range(50):
        p = 1 / (1 + np.exp(-(A @ params)))
        gradient = A.T @ (p - y) / n + penalty @ params
        hessian = (A * (p * (1 - p))[:, None]).T @ A / n + penalty
        params -= np.linalg.solve(hessian, gradient)
    return params


def objective(X, y, loss: str, l2: float, params) -> float:
    z = X @ params[:-1] + params[-1]
    value = np.mean(0.5 * (z - y) ** 2) if loss == "squared" else np.mean(np.logaddexp(0, z) - y * z)
    return value + 0.5 * l2 * params[:-1] @ params[:-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{ranks: results} for 1, 2, 3 ranks, plus the problems."""
    workdir = tmp_path_factory.mktemp("optimizers")
    w_sparse = make_problems(workdir)
    results = results_by_ranks(SCRIPT, workdir)
    return workdir, w_sparse, results


def _load(workdir, name):
    import h5py  # noqa: PLC0415

    with h5py.File(workdir / name, "r") as handle:
        return handle["X"][...], handle["y"][...]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_optimizer_reaches_the_reference_optimum(runs, ranks):
    workdir, _, results = runs
    checked = 0
    for name, result in results[ranks].items():
        if "/" not in name or name.split("/")[0] in ("l1", "enet", "gram", "gram-raw", "l1-logistic"):
            continue
        method, key = name.split("/")
        loss, l2 = key.split("-l2=")
        X, y = _load(workdir, "reg.h5" if loss == "squared" else "bin.h5")
        best = reference(X, y, loss, float(l2))
        error = np.max(np.abs(np.array(result["params"]) - best))
        tolerance = TOLERANCE.get(method, DEFAULT_TOLERANCE)
        assert error <= tolerance, (name, ranks, error, result)
        assert result["identical"], name
        if method == "sgd":
            optimum = objective(X, y, loss, float(l2), best)
            assert objective(X, y, loss, float(l2), np.array(result["params"])) <= optimum * (1 + 1e-3), name
            assert result["epochs"] == 60
        else:
            assert result["converged"], (name, result)
        checked += 1
    assert checked == 28


@pytest.mark.mpi
def test_gram_solver_solves_the_normal_equations(runs):
    workdir, _, results = runs
    X, y = _load(workdir, "reg.h5")
    for ranks, result in results.items():
        for l2 in (0.0, 0.1):
            best = reference(X, y, "squared", l2)
            for name in (f"gram/l2={l2}", f"gram-raw/l2={l2}"):
                run = result[name]
                assert run["solver"].startswith("gram") and run["optimizer"] == "cholesky", (name, run)
                assert np.max(np.abs(np.array(run["params"]) - best)) <= 1e-10 * np.max(np.abs(best)), (name, ranks)
                assert run["converged"] and run["iterations"] <= 2, (name, run)


@pytest.mark.mpi
def test_l1_recovers_the_support_and_agrees_across_methods_and_ranks(runs):
    _, w_sparse, results = runs
    support = w_sparse != 0
    base = np.array(results[1]["l1/gd"]["params"])
    for ranks, result in results.items():
        for name in ("l1/gd", "l1/nesterov", "l1/sgd", "l1/lbfgs", "l1/auto", "enet/gd", "enet/nesterov",
                     "enet/lbfgs", "enet/auto"):
            w = np.array(result[name]["params"])[:-1]
            assert np.array_equal(w != 0, support), (ranks, name, w)
        assert result["l1/auto"]["optimizer"] == "cd" and result["enet/auto"]["optimizer"] == "cd"
        for name in ("l1/gd", "l1/nesterov", "l1/lbfgs", "l1/auto"):
            assert result[name]["converged"], (ranks, name, result[name])
            assert np.max(np.abs(np.array(result[name]["params"]) - base)) < 1e-7, (ranks, name)
        enet = np.array(result["enet/gd"]["params"])
        for name in ("enet/nesterov", "enet/lbfgs", "enet/auto"):
            assert np.max(np.abs(np.array(result[name]["params"]) - enet)) < 1e-7, (ranks, name)
        logistic = np.array(result["l1-logistic/gd"]["params"]) - np.array(result["l1-logistic/lbfgs"]["params"])
        assert np.max(np.abs(logistic)) < 1e-7 and result["l1-logistic/lbfgs"]["converged"], ranks


@pytest.mark.mpi
def test_sgd_is_the_same_for_any_rank_count(runs):
    _, _, results = runs
    for name in ("sgd/logistic-l2=0.0", "sgd/squared-l2=0.1", "sgd-cosine", "l1/sgd"):
        one = np.array(results[1][name]["params"])
        for ranks in (2, 3):
            assert np.max(np.abs(np.array(results[ranks][name]["params"]) - one)) < 1e-10, (name, ranks)
    assert results[1]["sgd-cosine"]["epochs"] == 5


@pytest.mark.mpi
def test_lbfgs_satisfies_the_wolfe_conditions_at_every_accepted_step(runs):
    _, _, results = runs
    for ranks, result in results.items():
        for loss, check in result["wolfe"].items():
            assert check["checked"] >= 3, (ranks, loss, check)
            assert check["violations"] == [], (ranks, loss, check)
            assert check["grad_norm"] <= 1e-8, (ranks, loss, check)
