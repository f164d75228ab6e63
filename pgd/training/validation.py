"""Validation during training (``--validation`` / ``--validation-fraction``, ``--validate-every``,
``--early-stopping``): the loss and one metric of the current weights on the validation rows, computed in parallel
(each rank its rows, one Allreduce of three numbers), and the best weights kept for early stopping.

Metrics: the (weighted) mean loss of the training loss without its penalty (``val_loss``) and ``val_accuracy``
(logistic: probability ≥ 0.5; multinomial: the largest score) or ``val_rmse`` (squared loss).  Weights are those
the training rows get (``/sample_weight`` times ``--class-weight``).  Lower ``val_loss`` is better; a validation
that does not lower it by more than rounding (1e-12 relative) is no improvement.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from pgd.errors import InputError
from pgd.local.losses import get_loss


def check_validation_options(cfg) -> None:
    """One line on every rank for validation options that do not fit together or the mode."""
    wanted = cfg.validation or cfg.validation_fraction
    if cfg.validation and cfg.validation_fraction:
        raise InputError("give --validation or --validation-fraction, not both", collective=True)
    if cfg.early_stopping and not wanted:
        raise InputError("--early-stopping needs --validation FILE or --validation-fraction F", collective=True)
    if cfg.early_stopping and cfg.checkpoint:
        raise InputError("--early-stopping with --checkpoint is not supported (the best weights are not "
                         "checkpointed)", collective=True)
    if wanted and (cfg.mode != "data" or cfg.sync_every or cfg.solver == "gram"):
        raise InputError("--validation and --validation-fraction need --mode data (synchronous, iterative)",
                         collective=True)


class Validator:
    """The validation loss and metric of parameter vectors, and the early-stopping record.

    Parameters
    ----------
    rows : pgd.loader.validation.ValidationRows
        This rank's validation rows (device arrays).
    world : mpi4py.MPI.Comm
        All ranks.
    loss : str
        The training loss.
    d, n_classes : int
        Features and classes (1 unless multinomial).
    xp : module
        Array namespace of the rows.
    every, patience : int
        Validate every ``every`` iterations; stop after ``patience`` validations without improvement (0: never).
    """

    def __init__(self, rows, world, loss: str, d: int, n_classes: int, xp, *, every: int, patience: int):
        self.rows, self.world, self.loss_name, self.xp = rows, world, loss, xp
        self.loss = get_loss(loss)
        self.d, self.n_classes = d, n_classes
        self.every, self.patience = max(1, int(every)), int(patience)
        self.metric = "val_rmse" if loss == "squared" else "val_accuracy"
        self.last_iteration = None
        self.best = None            # (val_loss, iteration, metrics, host params)
        self.since_best = 0
        self._local = np.zeros(3)
        self._total = np.zeros(3)

    def due(self, iteration: int) -> bool:
        """Whether the (fresh) iterate ``iteration`` is validated: the first, then every ``every`` iterations."""
        return self.last_iteration is None or iteration - self.last_iteration >= self.every

    def _scores(self, params):
        xp, d, k = self.xp, self.d, self.n_classes
        coefficients = xp.asarray(params)
        if k == 1:
            return self.rows.X @ coefficients[:d].astype(self.rows.X.dtype) + float(params[d])
        matrix = coefficients.reshape(d + 1, k).astype(self.rows.X.dtype)
        return self.rows.X @ matrix[:d] + matrix[d]

    def metrics(self, params) -> dict:
        """``{"val_loss", metric}`` at the original-scale host parameters ``params`` (collective)."""
        xp, y = self.xp, self.rows.y
        scores = self._scores(params)
        s = xp.ones(len(y), dtype=xp.float64) if self.rows.weight is None else self.rows.weight.astype(xp.float64)
        if self.n_classes > 1:
            labels = y.astype(xp.int64)
            row_loss = self.loss.pointwise(labels, scores, xp) if len(y) else xp.zeros(0)
            hits = (scores.argmax(axis=1) == labels) if len(y) else xp.zeros(0, dtype=bool)
        else:
            row_loss = self.loss.pointwise(y, scores, xp)
            hits = (scores >= 0) == (y == 1) if self.loss_name == "logistic" else 2 * row_loss
        self._local[:] = (float(xp.sum(s * row_loss.astype(xp.float64))), float(xp.sum(s * hits)),
                          float(xp.sum(s)))
        self.world.Allreduce(self._local, self._total, op=MPI.SUM)
        loss_sum, metric_sum, total = self._total
        metric = metric_sum / total
        return {"val_loss": loss_sum / total, self.metric: math.sqrt(metric) if self.loss_name == "squared" else metric}

    def observe(self, iteration: int, params) -> tuple[dict, str | None]:
        """Validate ``params`` (host, original scale) at ``iteration``: ``(metrics, stop reason or None)``."""
        found = self.metrics(params)
        self.last_iteration = iteration
        value = found["val_loss"]
        if self.best is None or value < self.best[0] - 1e-12 * abs(self.best[0]):
            self.best = (value, iteration, found, np.array(params, dtype=np.float64, copy=True))
            self.since_best = 0
        else:
            self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            return found, (f"early stopping: validation loss did not improve for {self.patience} validations "
                           f"(best {self.best[0]:.6g} at iteration {self.best[1]})")
        return found, None

    def summary(self, final_params, final_metrics: dict) -> tuple[np.ndarray, dict]:
        """``(params to save, model facts)``: the best weights with ``--early-stopping``, else the final ones."""
        facts = {"validation": self.rows.source, "validation_rows": self.rows.n_global,
                 "validate_every": self.every}
        if self.patience:
            value, iteration, metrics, params = self.best
            facts.update(best_iteration=iteration, weights_from=f"iteration {iteration} (best validation loss)",
                         validation_metrics=dict(metrics, iteration=iteration))
            return params, facts
        facts["validation_metrics"] = dict(final_metrics, iteration=self.last_iteration)
        return final_params, facts
