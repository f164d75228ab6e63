"""Applying a trained model in parallel: ``pgd evaluate`` (metrics) and ``pgd predict`` (an output file).

Each rank reads its own block of rows. Metrics are combined from local sums (exact ROC AUC by a ring
pass of sorted scores, see :mod:`pgd.evaluation.metrics`). Predictions are sent to rank 0 one rank's block at a
time and written there into a temporary file that is renamed when complete, so rank 0 holds at most
one block and the output is never half-written, on any file system (no parallel HDF5 needed).
"""

from __future__ import annotations

import numpy as np

from pgd.comm.host import collectively
from pgd.data import block_range
from pgd.device.backend import cpu_backend
from pgd.errors import InputError
from pgd.evaluation.metrics import classification_metrics, regression_metrics
from pgd.fileio import atomic_h5_file, check_writable, refuse_same_files
from pgd.loader.host import load_row_slab
from pgd.local.losses import get_loss
from pgd.outputs.model_file import read_model


def _model_and_scores(world, model_path, data_path, *, x_key, y_key, locking, require_y, weight_key=None):
    """Read the model, this rank's rows (on the host: one pass needs no GPU), and ``z = X w + b``."""
    model = None
    with collectively(world):
        model = read_model(model_path)
    slab = load_row_slab(world, data_path, backend=cpu_backend(), dtype="float64", x_key=x_key, y_key=y_key,
                         locking=locking, require_y=require_y, weight_key=weight_key)
    if model.d != slab.meta.d:
        hint = ""
        if slab.meta.attrs.get("n_features_from") == "largest index in the file":
            hint = (f"; {data_path} was converted from LIBSVM with its largest feature index as the count: "
                    f"convert it again with --n-features {model.d}")
        raise InputError(f"model {model_path} has {model.d} features but {data_path} has {slab.meta.d} "
                         f"columns{hint}", collective=True)
    scores = slab.X @ model.w + model.b
    return model, slab, scores


def evaluate_model(world, model_path: str, data_path: str, *, x_key="X", y_key="y",
                   locking="best-effort", weight_key: str | None = "sample_weight") -> dict:
    """Metrics of a model on a dataset (same dict on every rank); weighted when the data file has sample
    weights (``weight_key``).

    Squared loss: mse, rmse, mae, r2. Logistic loss: log_loss, accuracy, roc_auc.
    """
    model, slab, scores = _model_and_scores(world, model_path, data_path, x_key=x_key, y_key=y_key,
                                            locking=locking, require_y=True, weight_key=weight_key)
    if model.loss == "logistic":
        with collectively(world):
            if np.any((slab.y != 0) & (slab.y != 1)):
                raise InputError(f"{data_path}: labels must be 0 or 1 to evaluate a logistic model")
        metrics = classification_metrics(slab.y, scores, world, weight=slab.weight)
    else:
        metrics = regression_metrics(slab.y, scores, world, weight=slab.weight)
    return {"model": model_path, "data": data_path, "loss": model.loss, "ranks": world.Get_size(),
            "weights": slab.weight_source, **metrics}


def predict_model(world, model_path: str, data_path: str, out: str, *, x_key="X", y_key="y",
                  locking="best-effort", out_label: str = "--out") -> dict:
    """Write ``/prediction`` (raw score for squared loss, probability of class 1 for logistic) and, for
    logistic models, ``/score`` (the raw score) and ``/label`` (0/1 at threshold 0.5) to ``out``.

    ``out_label`` names the output in messages (``"--out (from PGD_PREDICT_OUT)"``).
    """
    rank = world.Get_rank()
    with collectively(world):
        if rank == 0:
            refuse_same_files({"the model file": model_path, "the data file": data_path}, {out_label: out})
            check_writable(out, "prediction file")
    model, slab, scores = _model_and_scores(world, model_path, data_path, x_key=x_key, y_key=y_key,
                                            locking=locking, require_y=False)
    columns = {"prediction": get_loss(model.loss).link(scores, np)}
    if model.loss == "logistic":
        columns["score"] = scores
        columns["label"] = (columns["prediction"] >= 0.5).astype(np.float64)
    block = np.empty((len(columns), slab.n_local), dtype=np.float64)
    for row, values in enumerate(columns.values()):
        block[row] = values
    n = slab.n_global
    with collectively(world):  # a failed write (disk full) is one line on every rank
        if rank != 0:
            world.Send(block, dest=0, tag=7)
        else:
            _write_predictions(world, out, list(columns), block, n,
                               {"model": model_path, "data": data_path, "loss": model.loss})
    return {"model": model_path, "data": data_path, "out": out, "n": n, "columns": list(columns)}


def _write_predictions(world, out: str, names: list, own_block: np.ndarray, n: int, attrs: dict) -> None:
    """Rank 0: receive every rank's block in turn and write it; every block is received even when the
    write fails (the senders never wait forever), then the error is raised."""
    size = world.Get_size()
    pending = iter(range(1, size))
    try:
        with atomic_h5_file(out, "prediction file") as handle:
            datasets = [handle.create_dataset(name, shape=(n,), dtype=np.float64) for name in names]
            handle.attrs.update(attrs)
            for source in range(size):
                block = own_block if source == 0 else _receive(world, next(pending), len(names), n)
                start, stop = block_range(n, size, source)
                for row, dataset in enumerate(datasets):
                    dataset[start:stop] = block[row]
    finally:
        for source in pending:
            _receive(world, source, len(names), n)


def _receive(world, source: int, rows: int, n: int) -> np.ndarray:
    start, stop = block_range(n, world.Get_size(), source)
    block = np.empty((rows, stop - start), dtype=np.float64)
    world.Recv(block, source=source, tag=7)
    return block
