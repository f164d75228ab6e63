"""The right model by default, on real data (scikit-learn's bundled sets, *not* rescaled first).

One mpirun launch per rank count (1, 2, 3) trains every configuration of ``mpi_right_model_check.py``;
the assertions compare with float64 references computed here and with scikit-learn on the same
objective (``LogisticRegression(C = 1/(λ Σs))``, ``Ridge(alpha = λ Σs)``, ``Lasso(alpha = α)``,
``LinearRegression``).  Tolerances:

- logistic, defaults: relative objective gap ≤ 1e-6 (float64 data) and ≤ 1e-5 (float32 data) against
  Newton's method in float64;
- squared, defaults (the Gram solver): coefficients equal ``numpy.linalg.lstsq`` / the ridge closed form to
  1e-10 relative (float64); lbfgs: gap ≤ 1e-6;
- a column scaled by 1000 changes no prediction by more than 1e-8 relative (no penalty, and the
  standardised-penalty convention), float64;
- the lasso (coordinate descent and OWL-QN): objective gap ≤ 1e-8 against scikit-learn's ``Lasso``, the
  same zero coefficients (the diabetes columns are collinear, so coefficients agree only to ~1e-4);
- ``converged`` is true exactly when the optimality test holds.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from support import script
from support.files import read_weights, write_dataset
from support.mpi import results_by_ranks, run_pgd

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.linear_model import Lasso, LogisticRegression, Ridge  # noqa: E402

SCRIPT = script("mpi_right_model_check.py")
L2 = 1e-3


def _weights(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 2.0, n)


def _write(path, X, y, weight=None, dtype=np.float64):
    write_dataset(path, X.astype(dtype), y.astype(dtype))
    if weight is not None:
        with h5py.File(path, "a") as handle:
            handle["sample_weight"] = weight
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{ranks: results}`` for 1, 2 and 3 ranks, with the work directory."""
    workdir = tmp_path_factory.mktemp("right-model")
    Xb, yb = load_breast_cancer(return_X_y=True)
    Xd, yd = load_diabetes(return_X_y=True, scaled=False)
    for name, X, y in (("bc", Xb, yb), ("db", Xd, yd)):
        _write(workdir / f"{name}64.h5", X, y)
        _write(workdir / f"{name}32.h5", X, y, dtype=np.float32)
        wide = X.copy()
        wide[:, 0] *= 1000.0
        _write(workdir / f"{name}64-x1000.h5", wide, y)
        _write(workdir / f"{name}w.h5", X, y, weight=_weights(len(y)))
    results = results_by_ranks(SCRIPT, workdir)
    return workdir, results


def _params(path) -> np.ndarray:
    w, b, _ = read_weights(path)
    return np.append(w, b)


def _design(X) -> np.ndarray:
    return np.hstack([X, np.ones((len(X), 1))])


def logistic_objective(X, y, s, l2, params) -> float:
    z = _design(X) @ params
    return float(s @ (np.logaddexp(0, z) - y * z) / s.sum() + 0.5 * l2 * params[:-1] @ params[:-1])


def logistic_reference(X, y, s, l2) -> np.ndarray:
    """Newton's method in float64 on ``(1/Σs) Σ s_i loss_i + (λ/2)‖w‖²``."""
    A, d = _design(X), X.shape[1]
    params = np.zeros(d + 1)
    penalty = np.diag([l2] * d + [0.0])
    for _ in range(60):
        p = 1 / (1 + np.exp(-(A @ params)))
        gradient = A.T @ (s * (p - y)) / s.sum() + penalty @ params
        hessian = (A * (s * p * (1 - p))[:, None]).T @ A / s.sum() + penalty
        params -= np.linalg.solve(hessian, gradient)
    return params


def squared_objective(X, y, params) -> float:
    residual = _design(X) @ params - y
    return float(0.5 * residual @ residual / len(y))


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_default_logistic_reaches_the_optimum_on_raw_data(runs, ranks):
    _, results = runs
    X, y = load_breast_cancer(return_X_y=True)
    ones = np.ones(len(y))
    best = logistic_reference(X, y, ones, L2)
    optimum = logistic_objective(X, y, ones, L2, best)
    sk = LogisticRegression(C=1 / (L2 * len(y)), solver="newton-cholesky", tol=1e-12, max_iter=200).fit(X, y)
    np.testing.assert_allclose(np.append(sk.coef_[0], sk.intercept_), best, rtol=1e-8, atol=1e-8)
    for name, gap in (("logistic-f64", 1e-6), ("logistic-f32", 1e-5)):
        run = results[ranks][name]
        assert run["converged"] and run["optimizer"] == "lbfgs" and run["standardize"].startswith("on"), run
        reached = logistic_objective(X, y, ones, L2, _params(run["out"]))
        assert (reached - optimum) / optimum <= gap, (name, reached, optimum)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_sample_and_class_weights_equal_scikit_learn(runs, ranks):
    _, results = runs
    X, y = load_breast_cancer(return_X_y=True)
    s = _weights(len(y))
    run = results[ranks]["logistic-weights"]
    assert run["converged"] and "sample_weight" in run["sample_weight"] and "balanced" in run["sample_weight"]
    sk = LogisticRegression(C=1 / (L2 * s.sum()), solver="newton-cholesky", tol=1e-12, max_iter=200,
                            class_weight="balanced").fit(X, y, sample_weight=s)
    reference = np.append(sk.coef_[0], sk.intercept_)
    classes = s.sum() / (2 * np.array([s[y == 0].sum(), s[y == 1].sum()]))   # balanced, weighted counts
    effective = s * classes[y]
    optimum = logistic_objective(X, y, effective, L2, reference)
    assert logistic_objective(X, y, effective, L2, _params(run["out"])) - optimum <= 1e-6 * optimum
    Xd, yd = load_diabetes(return_X_y=True, scaled=False)
    sd = _weights(len(yd))
    ridge = Ridge(alpha=0.1 * sd.sum(), solver="cholesky").fit(Xd, yd, sample_weight=sd)
    expected = np.append(ridge.coef_, ridge.intercept_)
    direct = results[ranks]["ridge-weights"]
    assert direct["optimizer"] == "cholesky" and direct["converged"]
    np.testing.assert_allclose(_params(direct["out"]), expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    iterative = _params(results[ranks]["ridge-weights-lbfgs"]["out"])
    np.testing.assert_allclose(iterative, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_least_squares_by_default_is_the_normal_equations(runs, ranks):
    _, results = runs
    X, y = load_diabetes(return_X_y=True, scaled=False)
    exact = np.linalg.lstsq(_design(X), y, rcond=None)[0]
    run = results[ranks]["squared-f64"]
    assert run["optimizer"] == "cholesky" and run["solver"].startswith("gram (auto") and run["converged"]
    np.testing.assert_allclose(_params(run["out"]), exact, rtol=1e-10, atol=1e-10 * np.abs(exact).max())
    single = results[ranks]["squared-f32"]
    assert single["converged"]
    assert squared_objective(X, y, _params(single["out"])) <= squared_objective(X, y, exact) * (1 + 1e-5)
    lbfgs = results[ranks]["squared-lbfgs"]
    assert lbfgs["optimizer"] == "lbfgs" and lbfgs["converged"]
    assert squared_objective(X, y, _params(lbfgs["out"])) <= squared_objective(X, y, exact) * (1 + 1e-6)
    lasso = Lasso(alpha=0.5, tol=1e-14, max_iter=1_000_000).fit(X, y)
    expected = np.append(lasso.coef_, lasso.intercept_)

    def composite(params):
        return squared_objective(X, y, params) + 0.5 * np.abs(params[:-1]).sum()

    for name, method in (("lasso-cd", "cd"), ("lasso-owlqn", "lbfgs")):
        found = results[ranks][name]
        assert found["optimizer"] == method and found["converged"], found
        params = _params(found["out"])
        assert composite(params) <= composite(expected) * (1 + 1e-8), (name, params, expected)
        assert np.array_equal(params[:-1] == 0, expected[:-1] == 0), (name, params, expected)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_column_scaled_by_1000_changes_no_prediction(runs, ranks):
    _, results = runs
    for data, pairs in (
        ("db", [("squared-f64", "squared-x1000"), ("squared-lbfgs-tight", "squared-lbfgs-x1000")]),
        ("bc", [("logistic-std-penalty", "logistic-std-penalty-x1000")]),
    ):
        X = (load_diabetes(return_X_y=True, scaled=False) if data == "db" else load_breast_cancer(return_X_y=True))[0]
        wide = X.copy()
        wide[:, 0] *= 1000.0
        for plain, scaled in pairs:
            before = _design(X) @ _params(results[ranks][plain]["out"])
            after = _design(wide) @ _params(results[ranks][scaled]["out"])
            assert np.abs(after - before).max() <= 1e-8 * np.abs(before).max(), (plain, scaled)


@pytest.mark.mpi
def test_converged_is_true_exactly_when_the_optimality_test_holds(runs):
    _, results = runs
    for ranks, runs_of in results.items():
        for name, run in runs_of.items():
            assert run["converged"] == (run["optimality"] <= run["optimality_target"]), (ranks, name, run)
        assert not runs_of["budget-stop"]["converged"] and runs_of["budget-stop"]["iterations"] == 5
        rtol = runs_of["rtol-stop"]
        assert rtol["stop_reason"].startswith("relative loss change") and not rtol["converged"], rtol
        assert all(run["converged"] for name, run in runs_of.items() if not name.endswith("-stop"))


@pytest.mark.mpi
def test_logistic_l1_meets_its_optimality_conditions(runs):
    workdir, results = runs
    X, y = load_breast_cancer(return_X_y=True)
    params = _params(results[2]["logistic-l1"]["out"])
    z = _design(X) @ params
    gradient = _design(X).T @ (1 / (1 + np.exp(-z)) - y) / len(y)
    scale = X.std(axis=0)   # in standardised coordinates (v = w σ) the subgradient is divided by σ
    w, g, alpha = params[:-1], gradient[:-1], 1e-3
    residual = np.where(w != 0, g + alpha * np.sign(w), np.maximum(np.abs(g) - alpha, 0.0)) / scale
    assert np.abs(residual).max() <= 1e-5 and abs(gradient[-1]) <= 1e-5, residual
    assert 0 < np.count_nonzero(w) < len(w)


@pytest.mark.mpi
def test_divergence_and_unconverged_runs_never_replace_a_model(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    data = _write(tmp_path / "bc.h5", X, y)
    model = tmp_path / "m.h5"
    good = run_pgd(2, "train", data, "--loss", "logistic", "--l2", L2, "--out", model, "--quiet")
    assert good.returncode == 0 and "warning" not in good.stderr, good.stderr
    before = model.read_bytes()
    diverged = run_pgd(2, "train", data, "--loss", "logistic", "--optimizer", "gd", "--lr", "1e6",
                       "--max-iter", "20", "--out", model, "--quiet")
    assert diverged.returncode == 4, diverged.stdout + diverged.stderr
    assert "pgd: error: diverged" in diverged.stderr and "Traceback" not in diverged.stderr
    short = run_pgd(2, "train", data, "--loss", "logistic", "--max-iter", "3", "--require-convergence",
                    "--out", model, "--quiet")
    assert short.returncode == 3, short.stdout + short.stderr
    assert "pgd: error: not converged (--require-convergence)" in short.stderr
    assert model.read_bytes() == before
    warned = run_pgd(1, "train", data, "--loss", "logistic", "--optimizer", "gd", "--max-iter", "50",
                     "--quiet")
    assert warned.returncode == 0
    lines = [line for line in warned.stderr.splitlines() if line.startswith("pgd: warning: not converged")]
    assert len(lines) == 1 and "raise --max-iter" in lines[0] and "--optimizer lbfgs" in lines[0], warned.stderr
