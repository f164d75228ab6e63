"""Sparse data through the commands: convert (libsvm, npz, h5 <-> CSR, csv under mpirun), info, generate
--sparse, train, evaluate and predict on CSR, and the one-line refusals; cases batched per mpirun."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.sparse

from support.files import write_csr_dataset
from support.mpi import run_cases

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import dump_svmlight_file  # noqa: E402


def _matrix():
    rng = np.random.default_rng(11)
    X = scipy.sparse.random(150, 25, density=0.15, random_state=11, format="lil")
    X[[2, 50], :] = 0
    X[:, 24] = 0          # the largest index never appears: --n-features keeps the column
    X = X.tocsr()
    w = rng.standard_normal(25)
    y = (X @ w + 0.2 * rng.standard_normal(150) > 0).astype(float)
    return X, y


def _cases(tmp):
    X, y = _matrix()
    dump_svmlight_file(X, y, str(tmp / "a.svm"), zero_based=False)
    dump_svmlight_file(X, y, str(tmp / "a0.svm"), zero_based=True)
    scipy.sparse.save_npz(tmp / "a.npz", X)
    np.save(tmp / "y.npy", y)
    np.savetxt(tmp / "a.csv", np.column_stack([X.toarray(), y]), delimiter=",", header="", comments="")
    bad = X.copy()
    bad.data[7] = np.nan
    write_csr_dataset(tmp / "nan.h5", bad, y)
    write_csr_dataset(tmp / "pm1.h5", X, 2 * y - 1)

    def case(*args):
        return {"args": [str(a) for a in args]}

    return [
        case("data", "convert", tmp / "a.svm", tmp / "csr.h5", "--from", "libsvm", "--n-features", 25,
             "--dtype", "float64"),                                                     # 0
        case("data", "convert", tmp / "a0.svm", tmp / "csr0.h5", "--from", "libsvm", "--zero-based",
             "--n-features", 25, "--dtype", "float64"),                                 # 1
        case("data", "convert", tmp / "a.svm", tmp / "dense.h5", "--from", "libsvm", "--dense",
             "--n-features", 25, "--dtype", "float64"),                                 # 2
        case("data", "convert", tmp / "a.npz", tmp / "npz.h5", "--from", "npz", "--y-file", tmp / "y.npy",
             "--dtype", "float64"),                                                     # 3
        case("data", "convert", tmp / "dense.h5", tmp / "back.h5", "--from", "h5", "--to", "csr"),   # 4
        case("data", "convert", tmp / "csr.h5", tmp / "todense.h5", "--from", "h5", "--to", "dense"),  # 5
        case("data", "convert", tmp / "a.csv", tmp / "csv.h5", "--from", "csv"),         # 6
        case("data", "info", tmp / "csr.h5", "--json"),                                 # 7
        case("data", "generate", tmp / "gen.h5", "--sparse", "--n", 400, "--d", 1000, "--nnz-per-row", 12,
             "--task", "binary", "--seed", 3),                                          # 8
        case("train", tmp / "csr.h5", "--loss", "logistic", "--l2", "1e-2", "--quiet", "--out", tmp / "m.h5"),  # 9
        case("evaluate", tmp / "m.h5", tmp / "csr.h5", "--json"),                       # 10
        case("predict", tmp / "m.h5", tmp / "csr.h5", "--out", tmp / "p.h5"),           # 11
        case("train", tmp / "csr.h5", "--loss", "logistic", "--mode", "feature", "--out", tmp / "f.h5"),  # 12
        case("train", tmp / "nan.h5", "--loss", "logistic", "--out", tmp / "n.h5"),     # 13
        case("train", tmp / "pm1.h5", "--loss", "logistic", "--out", tmp / "n.h5"),     # 14
        case("data", "convert", tmp / "csr.h5", tmp / "x.h5", "--from", "h5"),          # 15
        case("data", "info", tmp / "gen.h5"),                                           # 16
        *[case("train", tmp / "csr.h5", "--loss", "logistic", "--optimizer", "gd", "--quiet", *extra)
          for extra in (("--max-iter", 4, "--checkpoint", tmp / "ck.h5", "--checkpoint-every", 1, "--out",
                         tmp / "c1.h5"),                                                # 17
                        ("--max-iter", 8, "--checkpoint", tmp / "ck.h5", "--resume", "--out", tmp / "c2.h5"),  # 18
                        ("--max-iter", 8, "--out", tmp / "c3.h5"))],                    # 19
        case("data", "convert", tmp / "csr.h5", tmp / "x.h5", "--from", "h5", "--to", "csr"),  # 20
    ]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    results = {}
    for ranks in (3, 1):
        tmp = tmp_path_factory.mktemp(f"sparse-cli-{ranks}")
        results[ranks] = (tmp, run_cases(ranks, _cases(tmp), tmp, timeout=300))
    return results


def _csr(path):
    with h5py.File(path) as handle:
        group = handle["X"]
        shape = tuple(group.attrs["shape"])
        matrix = scipy.sparse.csr_matrix((group["data"][...], group["indices"][...], group["indptr"][...]),
                                         shape=shape)
        return matrix, handle["y"][...] if "y" in handle else None, group["indices"].dtype


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3, 1])
def test_conversions_write_the_same_matrix(outcomes, ranks):
    tmp, results = outcomes[ranks]
    for index in range(9):
        assert results[index]["code"] == 0, (index, results[index])
    X, y = _matrix()
    np.testing.assert_array_equal(_csr(tmp / "npz.h5")[0].toarray(), X.toarray())   # npz: exact
    np.testing.assert_array_equal(_csr(tmp / "back.h5")[0].toarray(), _csr(tmp / "csr.h5")[0].toarray())
    for name in ("csr.h5", "csr0.h5", "npz.h5", "back.h5"):
        matrix, labels, index_dtype = _csr(tmp / name)
        assert matrix.shape == (150, 25) and index_dtype == np.int32, name
        # dump_svmlight_file writes 16 significant digits: the LIBSVM files are exact to rounding only
        np.testing.assert_allclose(matrix.toarray(), X.toarray(), rtol=1e-15, atol=0, err_msg=name)
        np.testing.assert_array_equal(labels, y, err_msg=name)
    for name in ("dense.h5", "todense.h5"):
        with h5py.File(tmp / name) as handle:
            np.testing.assert_allclose(handle["X"][...], X.toarray(), rtol=1e-15, atol=0, err_msg=name)
    with h5py.File(tmp / "csv.h5") as handle:
        np.testing.assert_allclose(handle["X"][...], X.toarray(), rtol=1e-6)
    assert "sparse CSR" in results[0]["stdout"] and "dense" in results[2]["stdout"]


@pytest.mark.mpi
def test_outputs_do_not_depend_on_the_rank_count(outcomes):
    (tmp3, _), (tmp1, _) = outcomes[3], outcomes[1]
    for name in ("csr.h5", "dense.h5", "csv.h5"):
        for key in ("X/data", "X/indices", "X/indptr") if name == "csr.h5" else ("X", "y"):
            with h5py.File(tmp3 / name) as a, h5py.File(tmp1 / name) as b:
                np.testing.assert_array_equal(a[key][...], b[key][...], err_msg=f"{name} {key}")
    with h5py.File(tmp3 / "p.h5") as a, h5py.File(tmp1 / "p.h5") as b:
        np.testing.assert_allclose(a["prediction"][...], b["prediction"][...], rtol=1e-9)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3, 1])
def test_info_reports_the_sparse_facts(outcomes, ranks):
    tmp, results = outcomes[ranks]
    info = json.loads(results[7]["stdout"])
    X, _ = _matrix()
    counts = np.diff(X.indptr)
    assert info["sparse"] and info["nnz"] == X.nnz and info["index_bits"] == 32 and info["non_finite"] == 0
    assert (info["row_nnz_min"], info["row_nnz_max"], info["empty_rows"]) == (0, counts.max(), int((counts == 0).sum()))
    assert info["density"] == pytest.approx(X.nnz / (150 * 25)) and info["labels"]["is_binary01"]
    text = results[16]["stdout"]
    assert "sparse CSR 400 x 1000" in text and "non-zeros per row" in text
    generated, labels, _ = _csr(tmp / "gen.h5")
    assert generated.shape == (400, 1000) and np.diff(generated.indptr).max() <= 12 and set(labels) <= {0, 1}


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3, 1])
def test_evaluate_and_predict_on_csr_match_numpy(outcomes, ranks):
    tmp, results = outcomes[ranks]
    assert results[9]["code"] == 0 and results[10]["code"] == 0 and results[11]["code"] == 0, results[9:12]
    X, y = _matrix()
    with h5py.File(tmp / "m.h5") as handle:
        w, b = handle["w"][...], float(handle["b"][()])
    z = X @ w + b
    metrics = json.loads(results[10]["stdout"])
    assert metrics["n"] == 150
    assert metrics["log_loss"] == pytest.approx(np.mean(np.logaddexp(0, z) - y * z), rel=1e-9)
    assert metrics["accuracy"] == pytest.approx(np.mean((z > 0) == (y == 1)))
    with h5py.File(tmp / "p.h5") as handle:
        np.testing.assert_allclose(handle["score"][...], z, rtol=1e-9, atol=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3, 1])
def test_refusals_are_one_line_on_every_rank(outcomes, ranks):
    tmp, results = outcomes[ranks]
    expected = {12: "is sparse (CSR, stored row after row): --mode feature",
                13: "non-finite values (NaN or Inf) in the data; first in row",
                14: "labels look like {-1,+1}",
                15: "--from h5 needs --to csr or --to dense",
                20: "is already sparse (CSR); nothing to convert"}
    for index, fragment in expected.items():
        result = results[index]
        assert set(result["codes_by_rank"]) == {2}, (index, result)
        lines = [line for line in result["stderr"].splitlines() if line.startswith("pgd: error")]
        assert len(lines) == 1 and fragment in lines[0], (index, result["stderr"])
    assert not (tmp / "f.h5").exists() and not (tmp / "n.h5").exists() and not (tmp / "x.h5").exists()


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3, 1])
def test_checkpoint_and_resume_on_csr(outcomes, ranks):
    tmp, results = outcomes[ranks]
    assert [results[i]["code"] for i in (17, 18, 19)] == [0, 0, 0], results[17:20]
    assert "resuming from" in results[18]["stderr"] + results[18]["stdout"]
    with h5py.File(tmp / "c2.h5") as resumed, h5py.File(tmp / "c3.h5") as straight:
        np.testing.assert_allclose(resumed["w"][...], straight["w"][...], rtol=1e-12, atol=1e-14)
