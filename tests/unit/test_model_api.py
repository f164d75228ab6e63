"""The pieces users touch after training, without mpirun: ``pgd.load_model`` (LinearModel), the model report of
``pgd model show``, the multiclass metrics (against scikit-learn), the model file's (d, K) layout, and the
counter-based held-out rows."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from mpi4py import MPI

import pgd
from pgd.data.holdout import holdout_mask
from pgd.errors import InputError
from pgd.evaluation.linear_model import LinearModel
from pgd.evaluation.metrics import multiclass_metrics
from pgd.outputs.model_file import read_model, split_params, write_model
from pgd.outputs.model_report import format_model_report, model_report

sklearn = pytest.importorskip("sklearn")
from sklearn.metrics import confusion_matrix, f1_score, log_loss  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 3))


def test_linear_models_of_every_loss():
    w, b = np.array([1.0, -2.0, 0.5]), 0.3
    squared = LinearModel(w, b, "squared")
    np.testing.assert_allclose(squared.predict(X), X @ w + b)
    with pytest.raises(AttributeError, match="needs a classifier"):
        squared.predict_proba(X)
    binary = LinearModel(w, b, "logistic", classes=["no", "yes"])
    proba = binary.predict_proba(X)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-(X @ w + b))), rtol=1e-14)
    assert list(binary.predict(X)) == ["yes" if p >= 0.5 else "no" for p in proba[:, 1]]
    assert list(binary.predict(X, threshold=0.9)) == ["yes" if p >= 0.9 else "no" for p in proba[:, 1]]
    W, c = RNG.standard_normal((4, 3)), RNG.standard_normal(4)
    multi = LinearModel(W, c, "multinomial")
    Z = X @ W.T + c
    expected = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(multi.predict_proba(X), expected, rtol=1e-12)
    assert list(multi.classes_) == [0, 1, 2, 3] and np.array_equal(multi.predict(X), Z.argmax(axis=1))
    with pytest.raises(ValueError, match="X has 2 features, the model expects 3"):
        multi.predict(X[:, :2])


def test_load_model_reads_a_multinomial_file(tmp_path):
    W, b = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    params = np.vstack([W, b]).ravel()
    w_back, b_back = split_params(params, 4)
    assert np.array_equal(w_back, W) and np.array_equal(b_back, b)
    path = str(tmp_path / "m.h5")
    write_model(path, W, b, {"loss": "multinomial", "classes": ["a", "b", "c", "d"], "n_classes": 4,
                             "feature_names": ["f0", "f1", "f2"]})
    model = pgd.load_model(path)
    assert model.coef_.shape == (4, 3) and list(model.classes_) == ["a", "b", "c", "d"]
    assert model.feature_names_ == ["f0", "f1", "f2"] and read_model(path).n_classes == 4
    np.testing.assert_allclose(model.decision_function(X), X @ W + b)
    with h5py.File(path, "a") as handle:
        del handle["b"]
        handle["b"] = np.zeros(3)
    with pytest.raises(InputError, match="needs /w \\(d, K\\) and /b \\(K,\\)"):
        pgd.load_model(path)
    (tmp_path / "not.h5").write_bytes(b"nothing")
    with pytest.raises(InputError):
        pgd.load_model(str(tmp_path / "not.h5"))


def test_the_model_report(tmp_path):
    W = np.array([[0.1, -3.0], [2.0, 0.5], [-0.2, 0.0]])
    path = str(tmp_path / "m.h5")
    write_model(path, W, np.array([0.5, -0.5]),
                {"loss": "multinomial", "classes": ["cat", "dog"], "n_classes": 2, "converged": True,
                 "feature_names": ["ears", "tail", "nose"], "validation_metrics": {"val_loss": 0.25, "iteration": 4},
                 "best_iteration": 4, "timing": {"wall": 1.0}})
    report = model_report(read_model(path), top=2)
    assert report["training"] == {"loss": "multinomial", "n_classes": 2, "classes": ["cat", "dog"]}
    assert report["outcome"] == {"converged": True, "best_iteration": 4}
    assert report["metrics"] == {"validation_metrics": {"val_loss": 0.25, "iteration": 4}}
    first, second = report["largest_coefficients"]
    assert first["class"] == "cat" and [c["feature"] for c in first["coefficients"]] == ["tail", "nose"]
    assert [c["coef"] for c in second["coefficients"]] == [-3.0, 0.5]
    json.dumps(report)
    text = format_model_report(report, path)
    assert "largest coefficients of class dog" in text and "  ears  -3" in text


@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_metrics_equal_scikit_learns(weighted):
    y = RNG.integers(0, 4, 60)
    y[y == 3] = 2   # class 3 is never true (it may be predicted)
    scores = RNG.standard_normal((60, 4)) + 2.0 * np.eye(4)[y]
    s = RNG.uniform(0.5, 2.0, 60) if weighted else None
    found = multiclass_metrics(y.astype(float), scores, MPI.COMM_SELF, weight=s)
    proba = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    predicted = scores.argmax(axis=1)
    assert found["log_loss"] == pytest.approx(log_loss(y, proba, sample_weight=s, labels=range(4)), rel=1e-12)
    assert found["accuracy"] == pytest.approx(np.average(predicted == y, weights=s), rel=1e-12)
    labels = sorted(set(y) | set(predicted))
    assert found["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro", labels=labels, sample_weight=s),
                                              rel=1e-12)
    np.testing.assert_allclose(found["confusion"], confusion_matrix(y, predicted, labels=range(4), sample_weight=s))
    empty = multiclass_metrics(np.zeros(0), np.zeros((0, 4)), MPI.COMM_SELF)
    assert empty["n"] == 0 and np.isnan(empty["accuracy"])


def test_holdout_rows_depend_on_the_row_and_seed_only():
    whole = holdout_mask(0, 1000, 0.25, 3)
    assert np.array_equal(np.concatenate([holdout_mask(0, 333, 0.25, 3), holdout_mask(333, 1000, 0.25, 3)]), whole)
    assert 200 < whole.sum() < 300
