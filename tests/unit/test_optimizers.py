"""Serial tests of the optimizers' logic on an in-process objective (NumPy, no MPI launch)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pgd.cli.options import train_config
from pgd.errors import InputError
from pgd.local.linear import LocalLinearGradient
from pgd.local.losses import get_loss
from pgd.optim import OPTIMIZERS, make_optimizer
from pgd.strategies import DataParallelObjective
from pgd.strategies.gram import gram_is_cheaper, reduce_gram, select_solver
from pgd.strategies.standardize import ColumnScaling
from support.files import write_dataset


class SumComm:
    """A one-rank communicator: sums over one rank are the identity."""

    name = "serial"

    def allreduce(self, buf) -> None:
        pass


def make_objective(loss="logistic", n=120, d=4, l2=0.05, fit_intercept=True, rows=None, seed=0):
    """Data-parallel objective of one rank holding global rows ``rows`` (all by default) of a problem."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    z = X @ np.linspace(-1, 1, d) + 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float) if loss == "logistic" else z + 0.1 * rng.random(n)
    start, stop = rows or (0, n)
    local = LocalLinearGradient(np.ascontiguousarray(X[start:stop]), y[start:stop].copy(), get_loss(loss),
                                fit_intercept=fit_intercept, xp=np, block_bytes=256)
    objective = DataParallelObjective(local, SumComm(), n, l2, np, curvature=get_loss(loss).curvature_bound)
    objective.row_range = (start, stop)
    return objective


CASES = [("gd", {}), ("gd", {"line_search": True, "lr": 50.0}), ("gd", {"l1": 0.02}), ("momentum", {}),
         ("nesterov", {}), ("nesterov", {"l1": 0.02}), ("adam", {"lr": 0.05}), ("lbfgs", {"memory": 3}),
         ("sgd", {"batch_size": 32, "schedule": "cosine", "epochs": 3}), ("sgd", {"batch_size": 50, "l1": 0.01})]


def _build(name, options, objective):
    cfg = train_config(data="unused", loss="logistic", optimizer=name, **options)
    lr = 1.0 if cfg.lr == "auto" else cfg.lr
    optimizer = make_optimizer(name, objective, xp=np, lr=lr, cfg=cfg)
    optimizer.budget(40)
    return optimizer


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{sorted(o)}" for n, o in CASES])
def test_state_dict_round_trip_continues_identically(name, options):
    objective = make_objective()
    first = _build(name, options, objective)
    first.start(np.zeros(objective.d + 1))
    for _ in range(7):
        first.step()
    state = first.state_dict()
    second = _build(name, options, objective)
    second.load_state_dict(state)
    assert np.array_equal(second.params, first.params)
    for _ in range(9):
        first.step()
        second.step()
    assert np.array_equal(first.params, second.params)
    assert first.loss == second.loss
    assert first.evaluations == second.evaluations
    assert state["name"] == name


def test_sgd_batches_split_by_rows_are_the_global_batches():
    n, batch = 37, 8
    reference = make_objective(n=n)
    plans = []
    for ranges in ([(0, n)], [(0, 19), (19, n)], [(0, 13), (13, 25), (25, n)]):
        members = []
        for rows in ranges:
            sgd = _build("sgd", {"batch_size": batch, "seed": 11}, make_objective(n=n, rows=rows))
            sgd._plan(2)
            members.append([rows[0] + sgd._local_rows[sgd._bounds[k]:sgd._bounds[k + 1]]
                            for k in range(sgd.steps_per_epoch)])
        plans.append([sorted(np.concatenate([m[k] for m in members]).tolist()) for k in range(len(members[0]))])
    order = np.random.default_rng([11, 2]).permutation(n)
    expected = [sorted(order[k:k + batch].tolist()) for k in range(0, n, batch)]
    assert plans[0] == plans[1] == plans[2] == expected
    assert reference.n_global == n


def test_sgd_batch_gradient_is_normalised_by_the_global_batch():
    objective = make_objective(loss="squared", l2=0.0)
    params = np.linspace(0.1, 0.5, objective.d + 1)
    rows = np.array([3, 5, 8])
    grad, full_grad = np.empty_like(params), np.empty_like(params)
    value = objective.value_and_grad_batch(params, grad, rows, batch_size=6)
    X, y = objective.local.X[rows], objective.local.y[rows]
    residual = X @ params[:-1] + params[-1] - y
    assert value == pytest.approx(0.5 * residual @ residual / 6)
    assert np.allclose(grad[:-1], X.T @ residual / 6) and grad[-1] == pytest.approx(residual.sum() / 6)
    objective.value_and_grad(params, full_grad)
    assert not np.allclose(grad, full_grad)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_gram_objective_equals_the_data_parallel_objective(fit_intercept):
    objective = make_objective(loss="squared", l2=0.3, fit_intercept=fit_intercept)
    identity = ColumnScaling(np.zeros(objective.d), np.ones(objective.d), np)
    gram = reduce_gram(objective, identity, l2_diagonal=np.append(np.full(objective.d, 0.3), 0.0))
    rng = np.random.default_rng(1)
    for _ in range(3):
        params = rng.standard_normal(objective.d + 1)
        if not fit_intercept:
            params[-1] = 0.0
        g1, g2 = np.empty_like(params), np.empty_like(params)
        assert gram.value_and_grad(params, g1) == pytest.approx(objective.value_and_grad(params, g2), rel=1e-12)
        assert np.allclose(g1, g2, rtol=1e-12, atol=1e-13)
    # exact λmax(G + λ) there; power iteration (stopped at 1e-4 relative change) estimates it from below
    assert gram.lipschitz(30, 0) == pytest.approx(objective.lipschitz(200, 0), rel=5e-2)
    assert gram.lipschitz(30, 0) >= objective.lipschitz(200, 0) * (1 - 1e-12)


def test_gram_cost_model():
    assert gram_is_cheaper(50) and gram_is_cheaper(2048)
    assert not gram_is_cheaper(2049) and not gram_is_cheaper(20_000)


@pytest.mark.parametrize("loss, optimizer, data_mode, expected", [
    ("squared", "auto", True, "gram (auto: cheaper than iterating)"),
    ("logistic", "auto", True, "iterative (auto: logistic loss has no direct solution)"),
    ("squared", "auto", False, "iterative (auto: the direct solver needs --mode data)"),
    ("squared", "lbfgs", True, "iterative (auto: --optimizer given)"),
])
def test_solver_auto_says_why(loss, optimizer, data_mode, expected):
    """The summary's solver line names the reason ``--solver auto`` iterates (a logistic run used to read
    "squared loss and data mode needed")."""
    cfg = SimpleNamespace(solver="auto", optimizer=optimizer, loss=loss)
    objective = SimpleNamespace(d=10, local=None) if data_mode else SimpleNamespace(d=10)
    assert select_solver(cfg, objective) == (expected.startswith("gram"), expected)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_l1_is_rejected_where_no_proximal_step_exists(name):
    with pytest.raises(InputError, match="--l1 needs"):
        _build(name, {"l1": 0.1}, make_objective())


def test_prox_soft_thresholds_w_and_never_the_intercept():
    optimizer = _build("gd", {"l1": 0.5}, make_objective())
    optimizer.start(np.zeros(5))
    params = np.array([2.0, -0.3, 0.4, -1.0, 3.0])
    optimizer.prox(params, 2.0)
    assert params.tolist() == [1.0, 0.0, 0.0, -0.0, 3.0]
    assert optimizer.l1_value(np.array([1.0, -2.0, 0.0, 0.0, 9.0])) == pytest.approx(1.5)


def test_lbfgs_records_wolfe_steps_and_converges():
    objective = make_objective()
    optimizer = _build("lbfgs", {}, objective)
    optimizer.start(np.zeros(objective.d + 1))
    while optimizer.grad_norm() > 1e-10 and not optimizer.stop_reason and len(optimizer.wolfe_log) < 40:
        optimizer.step()
    assert optimizer.grad_norm() <= 1e-10
    for alpha, f0, slope0, f1, slope1 in optimizer.wolfe_log:
        assert slope0 < 0 and f1 <= f0 + optimizer.c1 * alpha * slope0 + 1e-14
        assert abs(slope1) <= optimizer.c2 * abs(slope0)


def test_default_steps_of_adam_and_sgd_make_progress_on_badly_scaled_data(tmp_path, capsys):
    """Raw features spanning four orders of magnitude, one far from zero (a year, say), as real data have:
    L is large, so 1/L moves adam by about 1e-6 per coordinate and step and it stays at the start."""
    from pgd.training.sync import train

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((2000, 6))
    y = (Z @ rng.standard_normal(6) + rng.logistic(size=2000) > 0).astype(float)
    X = Z * np.logspace(-1, 3, 6)
    X[:, -1] += 2000.0
    data = write_dataset(tmp_path / "raw.h5", X, y)

    def run(**options):
        summary = train(train_config(data=data, loss="logistic", dtype="float64", quiet=True, **options))
        return summary["final_loss"], summary["lr"]

    start, best = np.log(2.0), run(optimizer="lbfgs", max_iter=500)[0]
    adam, adam_lr = run(optimizer="adam")
    assert adam_lr == 0.01 and start - adam >= 0.75 * (start - best), (adam, best)  # 1/L: 11 %
    sgd, _ = run(optimizer="sgd")  # 1/L in standardised coordinates: the scaling no longer holds it back
    assert best <= sgd and start - sgd >= 0.75 * (start - best), (sgd, best)
    capsys.readouterr()


def test_registry_lists_every_optimizer():
    assert sorted(OPTIMIZERS) == ["adam", "cd", "cholesky", "gd", "lbfgs", "momentum", "nesterov", "sgd"]
    assert not OPTIMIZERS["lbfgs"].needs_lr and OPTIMIZERS["gd"].needs_lr
