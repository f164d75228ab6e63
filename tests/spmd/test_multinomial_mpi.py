"""Multinomial logistic regression on real data (scikit-learn's bundled digits, raw: 1797 x 64, 10 classes, and
iris: 150 x 4, 3 classes) against scikit-learn's multinomial ``LogisticRegression`` on the same objective
``(1/Σs) Σ s_i loss_i + (λ/2)‖W‖²`` (``C = 1/(λ Σs)``, intercepts unpenalised), under 1, 2 and 3 ranks.

Tolerances: relative objective gap ≤ 1e-6 (float64 data) and ≤ 1e-5 (float32 data) at the defaults (digits:
``--tol 1e-7``; the default 1e-6 measured gaps of 0.5e-6 to 1.4e-6 there); with
``--tol 1e-9`` the coefficients equal scikit-learn's to 1e-4 of their largest magnitude and the intercepts
(defined up to a common shift: compared centred) likewise; the predicted classes are scikit-learn's.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pgd.data.sparse_convert import dense_to_csr
from support import script
from support.mpi import results_by_ranks, train_params

sklearn = pytest.importorskip("sklearn")
threadpoolctl = pytest.importorskip("threadpoolctl")
from sklearn.datasets import load_digits, load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

SCRIPT = script("mpi_multinomial_check.py")
L2 = 1e-3
LOADERS = {"digits": load_digits, "iris": load_iris}


def _weights(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 2.0, n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{ranks: results}`` for 1, 2 and 3 ranks."""
    workdir = tmp_path_factory.mktemp("multinomial")
    for name, load in LOADERS.items():
        X, y = load(return_X_y=True)
        for suffix, dtype, weighted in (("64", np.float64, False), ("32", np.float32, False), ("w", np.float64, True)):
            with h5py.File(workdir / f"{name}{suffix}.h5", "w") as handle:
                handle.attrs["pgd_format"] = 1
                handle["X"], handle["y"] = X.astype(dtype), y.astype(dtype)
                if weighted:
                    handle["sample_weight"] = _weights(len(y))
    return results_by_ranks(SCRIPT, workdir, timeout=600)


def _model(path):
    with h5py.File(path, "r") as handle:
        return handle["w"][...], handle["b"][...], dict(handle.attrs)


def objective(X, y, s, l2, l1, W, b) -> float:
    Z = X @ W + b
    top = Z.max(axis=1)
    loss = top + np.log(np.exp(Z - top[:, None]).sum(axis=1)) - Z[np.arange(len(y)), y]
    return float(s @ loss / s.sum() + 0.5 * l2 * np.sum(W * W) + l1 * np.abs(W).sum())


def reference(X, y, s, l2, l1=0.0, fit_intercept=True):
    """scikit-learn's optimum of the same objective, ``(W (d, K), b (K,))``."""
    with threadpoolctl.threadpool_limits(1):
        if l1:
            model = LogisticRegression(C=1 / (l1 * s.sum()), l1_ratio=1.0, solver="saga", tol=1e-12,
                                       max_iter=200_000, fit_intercept=fit_intercept)
        else:
            model = LogisticRegression(C=1 / (l2 * s.sum()), solver="newton-cg", tol=1e-12, max_iter=1000,
                                       fit_intercept=fit_intercept)
        model.fit(X, y, sample_weight=s)
    return model.coef_.T, model.intercept_ if fit_intercept else np.zeros(model.coef_.shape[0])


def _balanced(y, s):
    totals = np.bincount(y, weights=s)
    return s * (s.sum() / (len(totals) * totals))[y]


CASES = [  # run, data, sample weights, l2, l1, fit_intercept, relative gap
    ("digits-f64", "digits", None, L2, 0.0, True, 1e-6),
    ("digits-f32", "digits", None, L2, 0.0, True, 1e-5),
    ("digits-weights", "digits", "balanced", L2, 0.0, True, 1e-6),
    ("iris-f64", "iris", None, L2, 0.0, True, 1e-6),
    ("iris-f32", "iris", None, L2, 0.0, True, 1e-5),
    ("iris-weights", "iris", "file", L2, 0.0, True, 1e-6),
    ("iris-no-intercept", "iris", None, L2, 0.0, False, 1e-6),
    ("iris-no-standardize", "iris", None, L2, 0.0, True, 1e-6),
    ("iris-l1", "iris", None, 0.0, 1e-2, True, 1e-6),
]


@pytest.fixture(scope="module")
def references():
    found = {}
    for name, data, weights, l2, l1, fit_intercept, _ in CASES:
        X, y = LOADERS[data](return_X_y=True)
        s = np.ones(len(y)) if weights is None else _weights(len(y))
        s = _balanced(y, s) if weights == "balanced" else s
        W, b = reference(X, y, s, l2, l1, fit_intercept)
        found[name] = (X, y, s, W, b, objective(X, y, s, l2, l1, W, b))
    return found


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_the_objective_reaches_scikit_learns_optimum(runs, references, ranks, case):
    name, data, _, l2, l1, _, gap = case
    run = results_of(runs, ranks, name)
    assert run["converged"] and run["n_classes"] == (10 if data == "digits" else 3), run
    assert run["optimizer"] == "lbfgs" and run["replicas_identical"]
    X, y, s, W_ref, b_ref, optimum = references[name]
    W, b, attrs = _model(run["out"])
    assert W.shape == W_ref.shape and b.shape == b_ref.shape and attrs["loss"] == "multinomial"
    assert json.loads(attrs["classes"]) == list(range(W.shape[1]))
    reached = objective(X, y, s, l2, l1, W, b)
    assert (reached - optimum) / optimum <= gap, (name, reached, optimum)
    predicted, expected = np.argmax(X @ W + b, axis=1), np.argmax(X @ W_ref + b_ref, axis=1)
    assert np.count_nonzero(predicted != expected) <= (0 if gap <= 1e-6 else 1), name
    if name == "iris-l1":
        assert np.array_equal(W == 0, W_ref == 0), (W, W_ref)


def results_of(runs, ranks, name):
    return runs[ranks][name]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_tight_runs_give_scikit_learns_coefficients(runs, references, ranks):
    run = runs[ranks]["digits-tight"]
    assert run["converged"], run
    _, _, _, W_ref, b_ref, _ = references["digits-f64"]
    W, b, _ = _model(run["out"])
    scale = np.abs(W_ref).max()
    np.testing.assert_allclose(W, W_ref, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), rtol=0, atol=1e-4 * np.abs(b_ref).max())
    np.testing.assert_allclose(W.sum(axis=1), 0.0, atol=1e-8 * scale)   # the penalty's identifiability


@pytest.mark.mpi
def test_sgd_runs_and_rank_counts_agree(runs, references):
    X, y, s, _, _, optimum = references["iris-f64"]
    for ranks in (1, 2, 3):
        W, b, _ = _model(runs[ranks]["iris-sgd"]["out"])
        assert objective(X, y, s, L2, 0.0, W, b) <= 1.1 * optimum
    first = _model(runs[1]["iris-sgd"]["out"])
    for ranks in (2, 3):   # the same global batches: the same iterates up to rounding
        other = _model(runs[ranks]["iris-sgd"]["out"])
        np.testing.assert_allclose(other[0], first[0], rtol=1e-8, atol=1e-8)
    for ranks in (2, 3):
        assert runs[ranks]["digits-f64"]["final_loss"] == pytest.approx(runs[1]["digits-f64"]["final_loss"], rel=1e-6)


def test_csr_file_trains_the_dense_model(tmp_path):
    """Iris as a CSR file (some values zeroed, so rows differ in length) trains the dense file's model, with
    standardisation (centring as an O(d) transform) and weights, on 1 and 3 ranks."""
    X, y = load_iris(return_X_y=True)
    X = X * (np.random.default_rng(3).random(X.shape) < 0.7)
    dense = tmp_path / "iris.h5"
    with h5py.File(dense, "w") as handle:
        handle.attrs["pgd_format"] = 1
        handle["X"], handle["y"] = X, y.astype(np.float64)
        handle["sample_weight"] = np.linspace(0.5, 2.0, len(y))
    sparse = tmp_path / "iris-csr.h5"
    dense_to_csr(str(dense), str(sparse))
    args = ("--loss", "multinomial", "--l2", "1e-3", "--dtype", "float64", "--tol", "1e-10")
    expected, _, _ = train_params(1, tmp_path / "dense.h5", dense, *args)
    for ranks in (1, 3):
        params, attrs, _ = train_params(ranks, tmp_path / f"csr{ranks}.h5", sparse, *args)
        assert "SciPy CSR" in attrs["gradient_kernel"] and attrs["n_classes"] == 3
        np.testing.assert_allclose(params, expected, rtol=1e-8, atol=1e-8)
