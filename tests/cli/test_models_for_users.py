"""Models a user can read and use: multinomial runs end to end under 2 ranks (a CSV with a header and text labels
converted, trained, evaluated, predicted in three formats), ``pgd model show``, ``pgd.load_model`` against
``pgd predict``, ``--threshold``, and the one-line refusals of what multinomial does not support."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import pgd
from pgd.data import convert_file
from support.files import assert_one_error_line, write_dataset
from support.mpi import run_cases, run_pgd

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score, log_loss  # noqa: E402

NAMES = ["sepal length", "sepal width", "petal length", "petal width"]
SPECIES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """Iris as a CSV with a header and text labels, converted with ``--labels classes``; a model trained on it
    (2 ranks, sample weights), its predictions in three formats, evaluate's JSON and model show's JSON."""
    workdir = tmp_path_factory.mktemp("iris")
    X, y = load_iris(return_X_y=True)
    csv = workdir / "iris.csv"
    lines = [",".join(NAMES + ["species"])]
    lines += [",".join([*(repr(float(v)) for v in row), SPECIES[label]]) for row, label in zip(X, y)]
    csv.write_text("\n".join(lines) + "\n")
    convert_file(csv, workdir / "iris.h5", "csv", labels="classes", dtype="float64")
    model = workdir / "model.h5"
    cases = [{"args": ["train", workdir / "iris.h5", "--loss", "multinomial", "--l2", "1e-3", "--out", model,
                       "--quiet"]}]
    for fmt in ("h5", "csv", "npy"):
        cases.append({"args": ["predict", model, workdir / "iris.h5", "--out", workdir / f"p.{fmt}",
                               "--format", fmt]})
    cases += [{"args": ["evaluate", model, workdir / "iris.h5", "--json"]},
              {"args": ["model", "show", model, "--json", "--top", "2"]},
              {"args": ["model", "show", model]}]
    results = run_cases(2, [dict(case, args=[str(a) for a in case["args"]]) for case in cases], workdir, timeout=180)
    assert all(result["code"] == 0 for result in results), results
    return workdir, X, y, results


def test_a_multinomial_model_keeps_the_names_of_its_classes_and_features(iris):
    workdir, _, _, results = iris
    model = pgd.load_model(str(workdir / "model.h5"))
    assert model.coef_.shape == (3, 4) and model.intercept_.shape == (3,)
    assert list(model.classes_) == list(SPECIES) and model.feature_names_ == NAMES
    report = json.loads(results[5]["stdout"])
    assert report["training"]["loss"] == "multinomial" and report["training"]["n_classes"] == 3
    assert report["outcome"]["converged"] is True
    top = report["largest_coefficients"]
    assert [block["class"] for block in top] == list(SPECIES) and all(len(b["coefficients"]) == 2 for b in top)
    first = top[0]["coefficients"][0]
    assert first["feature"] in NAMES and abs(first["coef"]) == np.abs(model.coef_[0]).max()
    text = results[6]["stdout"]
    assert "largest coefficients of class virginica" in text and "converged" in text


def test_load_model_predicts_what_pgd_predict_wrote(iris):
    workdir, X, _, _ = iris
    model = pgd.load_model(str(workdir / "model.h5"))
    proba = model.predict_proba(X)
    with h5py.File(workdir / "p.h5", "r") as handle:
        np.testing.assert_allclose(handle["probability"][...], proba, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(model.classes_[handle["label"][...].astype(int)], model.predict(X))
        np.testing.assert_allclose(handle["score"][...], model.decision_function(X), rtol=1e-12, atol=1e-12)
    header = (workdir / "p.csv").read_text().splitlines()[0].split(",")
    assert header == ["label"] + [f"probability_{k}" for k in range(3)] + [f"score_{k}" for k in range(3)]
    table = np.loadtxt(workdir / "p.csv", delimiter=",", skiprows=1)
    matrix = np.load(workdir / "p.npy")
    for found in (table, matrix):
        assert found.shape == (150, 7)
        np.testing.assert_allclose(found[:, 1:4], proba, rtol=1e-12, atol=1e-15)
    sparse = pytest.importorskip("scipy.sparse")
    np.testing.assert_allclose(model.predict_proba(sparse.csr_matrix(X)), proba, rtol=1e-12)


def test_evaluate_gives_the_serial_multiclass_metrics(iris):
    workdir, X, y, results = iris
    metrics = json.loads(results[4]["stdout"])
    model = pgd.load_model(str(workdir / "model.h5"))
    proba = model.predict_proba(X)
    predicted = proba.argmax(axis=1)
    assert metrics["n"] == 150 and metrics["accuracy"] == pytest.approx(np.mean(predicted == y), rel=1e-12)
    assert metrics["log_loss"] == pytest.approx(log_loss(y, proba), rel=1e-9)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"), rel=1e-12)
    np.testing.assert_array_equal(metrics["confusion"], confusion_matrix(y, predicted))


def test_threshold_and_formats_for_a_binary_model(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    data = write_dataset(tmp_path / "b.h5", X, (X[:, 0] + rng.logistic(size=60) > 0).astype(float))
    model = tmp_path / "m.h5"
    assert run_pgd(1, "train", data, "--loss", "logistic", "--out", model, "--quiet").returncode == 0
    result = run_pgd(2, "predict", model, data, "--out", tmp_path / "p.npy", "--format", "npy", "--threshold", "0.8")
    assert result.returncode == 0, result.stderr
    loaded = pgd.load_model(str(model))
    matrix = np.load(tmp_path / "p.npy")   # prediction, score, label
    np.testing.assert_allclose(matrix[:, 0], loaded.predict_proba(X)[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(matrix[:, 2], loaded.predict(X, threshold=0.8))
    assert 0 < matrix[:, 2].sum() < np.sum(matrix[:, 0] >= 0.5)


@pytest.mark.parametrize("extra, fragment", [
    (["--mode", "shm"], "--mode shm is not supported for multinomial"),
    (["--mode", "async"], "--mode async is not supported for multinomial"),
    (["--sync-every", "4"], "--sync-every (local SGD) is not supported for multinomial"),
    (["--solver", "gram"], "--solver gram is not supported for multinomial"),
    (["--classes", "2"], "labels are not 0 .. 1 (--classes 2)"),
    (["--class-weight", "1,2"], "3 finite non-negative weights"),
])
def test_what_multinomial_does_not_support_is_one_line(tmp_path, extra, fragment):
    X = np.random.default_rng(1).standard_normal((30, 2))
    data = write_dataset(tmp_path / "m.h5", X, np.arange(30) % 3)
    results = run_cases(2, [{"args": ["train", data, "--loss", "multinomial", "--out", str(tmp_path / "o.h5"),
                                      *extra]}], tmp_path)
    assert_one_error_line(results[0], fragment)
    assert not (tmp_path / "o.h5").exists()


def test_classes_belongs_to_multinomial_and_threshold_to_binary(tmp_path):
    X = np.random.default_rng(2).standard_normal((30, 2))
    data = write_dataset(tmp_path / "m.h5", X, np.arange(30) % 3)
    model = tmp_path / "model.h5"
    results = run_cases(2, [
        {"args": ["train", data, "--loss", "squared", "--classes", "3"]},
        {"args": ["train", data, "--loss", "multinomial", "--out", str(model), "--quiet"]},
        {"args": ["predict", str(model), data, "--out", str(tmp_path / "p.h5"), "--threshold", "0.3"]},
    ], tmp_path)
    assert_one_error_line(results[0], "--classes needs --loss multinomial")
    assert results[1]["code"] == 0
    assert_one_error_line(results[2], "--threshold applies to binary (logistic) models")


@pytest.mark.parametrize("extra, fragment", [
    (["--validation", "V", "--validation-fraction", "0.2"], "not both"),
    (["--early-stopping", "3"], "--early-stopping needs --validation FILE or --validation-fraction F"),
    (["--validation-fraction", "0.2", "--mode", "feature"], "need --mode data"),
    (["--validation-fraction", "0.2", "--solver", "gram"], "need --mode data"),
    (["--validation-fraction", "0.2", "--early-stopping", "2", "--checkpoint", "CK"], "not checkpointed"),
    (["--validation-fraction", "0.001"], "leaves 0 validation and 30 training rows"),
    (["--validation", "WIDE"], "has 3 columns but the training data has 2"),
])
def test_validation_options_that_cannot_work_are_one_line(tmp_path, extra, fragment):
    rng = np.random.default_rng(3)
    data = write_dataset(tmp_path / "d.h5", rng.standard_normal((30, 2)), rng.standard_normal(30))
    wide = write_dataset(tmp_path / "w.h5", rng.standard_normal((30, 3)), rng.standard_normal(30))
    names = {"V": data, "WIDE": wide, "CK": str(tmp_path / "ck.h5")}
    results = run_cases(2, [{"args": ["train", data, "--loss", "squared", "--out", str(tmp_path / "o.h5"),
                                      *[names.get(arg, arg) for arg in extra]]}], tmp_path)
    assert_one_error_line(results[0], fragment)
    assert not (tmp_path / "o.h5").exists()


def test_bench_gradient_times_multinomial_against_one_gemm(tmp_path):
    result = run_pgd(2, "bench", "gradient", "--loss", "multinomial", "--n", "3000", "--d", "20", "--classes", "3",
                     "--classes", "7", "--repeats", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [case["classes"] for case in report["cases"]] == [3, 7] and report["ranks"] == 2
    for case in report["cases"]:       # both paths timed against the same GEMM, whichever auto would pick
        for path in ("fused", "blocked"):
            assert case[f"{path}_ratio"] == case[f"{path}_iteration"] / case["local_gemm"] > 0
        assert case["kernels"]["fused_iteration"].startswith("fused one-pass CPU kernel (numba, dense, ")


def test_labels_outside_the_models_classes_are_one_line(tmp_path):
    X = np.random.default_rng(5).standard_normal((30, 2))
    data = write_dataset(tmp_path / "m.h5", X, np.arange(30) % 3)
    other = write_dataset(tmp_path / "o.h5", X, np.arange(30) % 4)
    model = tmp_path / "model.h5"
    results = run_cases(2, [
        {"args": ["train", data, "--loss", "multinomial", "--out", str(model), "--quiet"]},
        {"args": ["evaluate", str(model), other]},
        {"args": ["train", data, "--loss", "multinomial", "--validation", other]},
    ], tmp_path)
    assert results[0]["code"] == 0
    assert_one_error_line(results[1], "labels are not 0 .. 2 (the model's classes: 3)")
    assert_one_error_line(results[2], "labels are not 0 .. 2 (the training data's classes: 3)")
