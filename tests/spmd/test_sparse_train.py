"""Training on sparse (CSR) files equals scikit-learn on the same SciPy CSR data, and the dense twin.

One mpirun launch per rank count (1, 2, 3) trains every configuration of ``mpi_sparse_train_check.py``.
The data has empty rows and all-zero columns; ``heavy-csr.h5`` puts most non-zeros in one row, so the
nnz-balanced partition leaves a rank with no rows at 3 ranks; ``bin-csr64.h5`` stores int64 indices.
Tolerances: coefficients equal scikit-learn's (``LogisticRegression(C = 1/(λ Σs))``, ``Ridge(alpha = λ Σs)``,
``LinearRegression``) to 1e-6 relative with tight tolerances (1e-10 for the Gram solver); the dense and the
sparse file give the same model to 1e-10 (float64, standardisation on); rank counts agree to 1e-9.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from support import script
from support.files import read_weights, write_csr_dataset, write_dataset
from support.mpi import results_by_ranks

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge  # noqa: E402

SCRIPT = script("mpi_sparse_train_check.py")
L2 = 1e-2


def _data(n=240, d=60, seed=3):
    rng = np.random.default_rng(seed)
    X = scipy.sparse.random(n, d, density=0.08, random_state=seed, format="lil")
    X[[4, 17, 100], :] = 0                  # empty rows
    X[:, [0, 9, 33]] = 0                    # all-zero columns
    X = X.tocsr()
    X.data *= rng.uniform(0.5, 3.0, X.nnz)
    true = rng.standard_normal(d) * 2
    y = (X @ true + 0.3 + rng.logistic(size=n) * 0.5 > 0).astype(float)
    y_reg = X @ true + 1.5 + 0.1 * rng.standard_normal(n)
    return X, y, y_reg, rng.uniform(0.5, 2.0, n)


def _offset(X, y):
    """A first column near 1e5 with unit spread, stored in every row (the sparse Gram route would lose
    digits centring it)."""
    offset = scipy.sparse.hstack([1e5 + np.random.default_rng(8).standard_normal((X.shape[0], 1)), X]).tocsr()
    return offset, y + 0.5 * (offset[:, 0].toarray().ravel() - 1e5)


def _heavy():
    rows = [np.arange(0, 40, dtype=np.int32)] + [np.array([k % 40], dtype=np.int32) for k in range(1, 9)]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    data = np.linspace(0.5, 1.5, indptr[-1])
    X = scipy.sparse.csr_matrix((data, np.concatenate(rows), indptr), shape=(9, 40))
    return X, np.array([1, 0, 1, 1, 0, 1, 0, 0, 1], dtype=float)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sparse-train")
    X, y, y_reg, s = _data()
    write_csr_dataset(workdir / "bin-csr.h5", X, y)
    write_csr_dataset(workdir / "bin-csr64.h5", X, y, index_dtype=np.int64)
    write_csr_dataset(workdir / "bin-csr32.h5", X.astype(np.float32), y.astype(np.float32))
    write_csr_dataset(workdir / "binw-csr.h5", X, y, sample_weight=s)
    write_dataset(workdir / "bin-dense.h5", X.toarray(), y)
    write_csr_dataset(workdir / "reg-csr.h5", X, y_reg)
    write_csr_dataset(workdir / "regw-csr.h5", X, y_reg, sample_weight=s)
    write_csr_dataset(workdir / "reg-offset-csr.h5", *_offset(X, y_reg))
    write_dataset(workdir / "reg-dense.h5", X.toarray(), y_reg)
    write_csr_dataset(workdir / "heavy-csr.h5", *_heavy())
    return results_by_ranks(SCRIPT, workdir)


def _params(run) -> np.ndarray:
    w, b, _ = read_weights(run["out"])
    return np.append(w, b)


def _close(got, want, rtol):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def _sk_logistic(X, y, s=None, l2=L2, **options):
    total = len(y) if s is None else s.sum()
    model = LogisticRegression(C=1 / (l2 * total), solver="lbfgs", tol=1e-12, max_iter=10_000, **options)
    model.fit(X, y, sample_weight=s)
    return np.append(model.coef_[0], model.intercept_)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_logistic_on_csr_equals_scikit_learn(runs, ranks):
    X, y, _, s = _data()
    run = runs[ranks]["logistic-csr"]
    assert run["converged"] and run["optimizer"] == "lbfgs" and run["standardize"].startswith("on"), run
    assert "CSR" in run["gradient_kernel"], run
    reference = _sk_logistic(X, y)
    fused = runs[ranks]["logistic-csr-fused"]
    assert fused["gradient_kernel"].startswith("fused one-pass CPU kernel (numba, CSR"), fused
    for name in ("logistic-csr", "logistic-csr-fused", "logistic-csr-int64", "logistic-csr-nostd"):
        _close(_params(runs[ranks][name]), reference, 1e-6)
    noint = LogisticRegression(C=1 / (L2 * len(y)), tol=1e-12, max_iter=10_000, fit_intercept=False).fit(X, y)
    _close(_params(runs[ranks]["logistic-csr-noint"])[:-1], noint.coef_[0], 1e-6)
    _close(_params(runs[ranks]["logistic-csr-f32"]), reference, 1e-3)
    _close(_params(runs[ranks]["logistic-csr-as-f32"]), reference, 1e-3)      # --dtype float32 on a float64 file
    classes = s.sum() / (2 * np.array([s[y == 0].sum(), s[y == 1].sum()]))
    weighted = _sk_logistic(X, y, s * classes[y.astype(int)], l2=L2 * s.sum() / (s * classes[y.astype(int)]).sum())
    _close(_params(runs[ranks]["logistic-csr-weights"]), weighted, 1e-6)
    Xh, yh = _heavy()
    _close(_params(runs[ranks]["logistic-heavy-row"]), _sk_logistic(Xh, yh), 1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_optimizer_reaches_the_csr_optimum(runs, ranks):
    X, y, _, _ = _data()
    reference = _sk_logistic(X, y)

    def objective(params):
        z = X @ params[:-1] + params[-1]
        return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * L2 * params[:-1] @ params[:-1])

    best = objective(reference)
    for name, gap in (("logistic-csr-gd", 1e-8), ("logistic-csr-nesterov", 1e-8), ("logistic-csr-adam", 1e-7)):
        assert (objective(_params(runs[ranks][name])) - best) / best <= gap, name
    # sgd (constant step, 30 epochs) is far from the optimum, but its batches are those of the dense file:
    # test_dense_and_sparse_files_give_the_same_model compares the two runs to 1e-10
    assert objective(_params(runs[ranks]["logistic-csr-sgd"])) < 0.9 * np.log(2)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_squared_loss_on_csr_equals_scikit_learn(runs, ranks):
    X, _, y, s = _data()
    ridge = Ridge(alpha=L2 * len(y), solver="cholesky").fit(X.toarray(), y)
    expected = np.append(ridge.coef_, ridge.intercept_)
    direct = runs[ranks]["ridge-csr"]
    assert direct["optimizer"] == "cholesky" and direct["solver"].startswith("gram"), direct
    _close(_params(direct), expected, 1e-10)
    _close(_params(runs[ranks]["ridge-csr-lbfgs"]), expected, 1e-6)
    _close(_params(runs[ranks]["ridge-csr-lbfgs-fused"]), expected, 1e-6)
    ols = LinearRegression().fit(X.toarray(), y)     # on SciPy CSR it runs lsqr, accurate to ~1e-6 only
    _close(_params(runs[ranks]["ols-csr"]), np.append(ols.coef_, ols.intercept_), 1e-9)
    offset_run = runs[ranks]["ols-csr-offset"]
    assert offset_run["solver"].startswith("iterative (auto: 1 CSR column(s) with |mean| > 1000"), offset_run
    Xo, yo = _offset(X, y)
    exact = LinearRegression().fit(Xo.toarray(), yo)
    _close(_params(offset_run), np.append(exact.coef_, exact.intercept_), 1e-6)
    weighted = LinearRegression().fit(X.toarray(), y, sample_weight=s)
    _close(_params(runs[ranks]["ols-csr-weights"]), np.append(weighted.coef_, weighted.intercept_), 1e-9)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_dense_and_sparse_files_give_the_same_model(runs, ranks):
    for sparse, dense in (("logistic-csr", "logistic-dense"), ("ridge-csr", "ridge-dense"),
                          ("logistic-csr-l1", "logistic-dense-l1"), ("logistic-csr-sgd", "logistic-dense-sgd")):
        _close(_params(runs[ranks][sparse]), _params(runs[ranks][dense]), 1e-10)


@pytest.mark.mpi
def test_rank_counts_agree(runs):
    for name in ("logistic-csr", "logistic-csr-fused", "logistic-heavy-row", "ridge-csr", "logistic-csr-l1",
                 "logistic-csr-weights"):
        for ranks in (2, 3):
            _close(_params(runs[ranks][name]), _params(runs[1][name]), 1e-9)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_async_shm_and_local_sgd_run_on_csr(runs, ranks):
    X, y, _, _ = _data()

    def objective(params):
        z = X @ params[:-1] + params[-1]
        return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * L2 * params[:-1] @ params[:-1])

    for name in ("logistic-csr-async", "logistic-csr-shm", "logistic-csr-local-sgd"):
        assert objective(_params(runs[ranks][name])) < 0.9 * np.log(2), name
    # local SGD depends on which rows each rank holds (nnz-balanced for CSR, equal counts for dense): the
    # two files give models of the same quality, not the same model
    dense = objective(_params(runs[ranks]["logistic-dense-local-sgd"]))
    assert abs(objective(_params(runs[ranks]["logistic-csr-local-sgd"])) - dense) <= 0.02 * dense
