"""The Gram solver for squared loss: reduce ``X̃ᵀX̃`` and ``X̃ᵀy`` once, then iterate in O(d²) per step.

With ``X̃ = [X, 1]`` (or ``X`` without intercept), ``G = X̃ᵀX̃/n``, ``c = X̃ᵀy/n`` and ``q = yᵀy/n``:

    f(p) = ½ pᵀGp − pᵀc + ½q + (λ/2)‖w‖²,      ∇f(p) = Gp − c + λ[w; 0]

which is the same objective (and, up to rounding, the same gradient) as the data-parallel one, so every
optimizer produces the same iterates as with full passes over the data, without further communication.
Building it costs ``2·n_local·(d+1)²`` flops per rank and one Allreduce of ``(d+1)² + d + 2`` numbers;
an iterative full-batch step costs about ``4·n_local·(d+1)`` flops and one Allreduce of ``d + 2``.
``--solver auto`` takes the Gram route when ``gram < iterations × step`` with the iteration budget
(``--max-iter``, or the epochs of SGD, which cannot use it) and ``G`` fits in :data:`MAX_GRAM_BYTES`.
"""

from __future__ import annotations

import math
import time

from pgd.errors import InputError
from pgd.strategies.data_parallel import ReplicatedParameters

#: Largest Gram matrix (bytes, float64) that ``--solver auto`` will build.
MAX_GRAM_BYTES = 1 << 30


class GramObjective(ReplicatedParameters):
    """The squared-loss objective from its reduced Gram matrix; same interface as the data-parallel one.

    Parameters
    ----------
    gram : array, (d + 1, d + 1), float64
        ``X̃ᵀX̃/n`` (last row and column zero without intercept).
    moment : array, (d + 1,), float64
        ``X̃ᵀy/n``.
    mean_square : float
        ``yᵀy/n``.
    l2 : float
        Penalty λ on ``w``.
    xp : module
        Array module.
    comm : pgd.comm.Communicator
        Kept for the timing split (no communication happens after the set-up).
    """

    def __init__(self, gram, moment, mean_square: float, l2: float, xp, comm):
        self.gram, self.moment, self.mean_square = gram, moment, float(mean_square)
        self.l2, self.xp, self.comm = float(l2), xp, comm
        self.d = gram.shape[0] - 1
        self.compute_seconds = 0.0
        self._product = xp.empty(self.d + 1, dtype=xp.float64)

    def value_and_grad(self, params, grad_out) -> float:
        """Global loss at ``params``; the gradient goes to ``grad_out`` (length d + 1)."""
        started = time.perf_counter()
        xp = self.xp
        xp.dot(self.gram, params, out=self._product)
        xp.subtract(self._product, self.moment, out=grad_out)
        # ½pᵀGp − pᵀc = ½ pᵀ(Gp − c) − ½ pᵀc
        loss = 0.5 * (float(xp.dot(params, grad_out)) - float(xp.dot(params, self.moment)) + self.mean_square)
        if self.l2:
            w = params[: self.d]
            grad_out[: self.d] += self.l2 * w
            loss += 0.5 * self.l2 * float(xp.dot(w, w))
        self.compute_seconds += time.perf_counter() - started
        return loss

    def lipschitz(self, power_iters: int, seed: int) -> float:
        """``L = λmax(G) + λ``, exact (a symmetric eigenvalue solve of size d + 1)."""
        return float(self.xp.linalg.eigvalsh(self.gram)[-1]) + self.l2


def reduce_gram(objective) -> GramObjective:
    """Build ``G``, ``c``, ``q`` from every rank's rows (float64 sums by row blocks) and one Allreduce.

    Parameters
    ----------
    objective : pgd.strategies.DataParallelObjective
        Supplies ``local`` (the rows), ``comm``, ``n_global``, ``l2`` and ``xp``.
    """
    local, xp = objective.local, objective.xp
    d1 = local.d + 1
    buffer = xp.zeros(d1 * d1 + d1 + 1, dtype=xp.float64)
    gram = buffer[: d1 * d1].reshape(d1, d1)
    moment = buffer[d1 * d1: d1 * d1 + d1]
    for start in range(0, local.n_local, local.block_rows):
        X = local.X[start:start + local.block_rows].astype(xp.float64)
        y = local.y[start:start + local.block_rows].astype(xp.float64)
        gram[:-1, :-1] += X.T @ X
        moment[:-1] += X.T @ y
        buffer[-1] += float(y @ y)
        if local.fit_intercept:
            gram[:-1, -1] += X.sum(axis=0)
            moment[-1] += float(y.sum())
    if local.fit_intercept:
        gram[-1, -1] = local.n_local
    objective.comm.allreduce(buffer)
    buffer /= objective.n_global
    if local.fit_intercept:  # identical symmetric bits on every rank
        gram[-1, :-1] = gram[:-1, -1]
    return GramObjective(gram, moment, float(buffer[-1]), objective.l2, xp, objective.comm)


def gram_is_cheaper(n_local: int, d: int, iterations: int) -> bool:
    """Whether building the Gram matrix and iterating in O(d²) costs fewer flops than ``iterations``
    full passes (per rank), and ``G`` fits in :data:`MAX_GRAM_BYTES`."""
    d1 = d + 1
    if 8 * d1 * d1 > MAX_GRAM_BYTES:
        return False
    return 2 * n_local * d1 * d1 + iterations * 2 * d1 * d1 < iterations * 4 * n_local * d1


def select_solver(cfg, objective, world):
    """Apply ``--solver``: returns ``(objective, description)``, the description for the summary."""
    choice = getattr(cfg, "solver", "iterative") or "iterative"
    if choice == "iterative":
        return objective, "iterative"
    usable = cfg.loss == "squared" and cfg.optimizer != "sgd" and hasattr(objective, "local")
    if choice == "gram" and not usable:
        raise InputError("--solver gram needs --loss squared, full-batch optimizers (not sgd) and --mode data",
                         collective=True)
    if choice == "auto":
        n_local = math.ceil(objective.n_global / world.Get_size()) if usable else 0
        if not usable or not gram_is_cheaper(n_local, objective.d, cfg.max_iter):
            reason = "squared loss, full batch and data mode needed" if not usable else "not cheaper"
            return objective, f"iterative (auto: {reason})"
    started = time.perf_counter()
    gram = reduce_gram(objective)
    seconds = time.perf_counter() - started
    how = "auto: cheaper than full passes" if choice == "auto" else "requested"
    return gram, f"gram ({how}; XᵀX reduced once in {seconds:.3g} s, O(d²) per iteration)"
