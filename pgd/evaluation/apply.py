"""Applying a trained model in parallel: ``pgd evaluate`` (metrics) and ``pgd predict`` (an output file).

Each rank reads its own block of rows. Metrics are combined from local sums (exact ROC AUC by a ring
pass of sorted scores, see :mod:`pgd.evaluation.metrics`). Predictions are sent to rank 0 one rank's block at a
time and written there into a temporary file that is renamed when complete, so rank 0 holds at most
one block and the output is never half-written, on any file system (no parallel HDF5 needed).

Prediction files (``--format``): HDF5 with one dataset per column (``/probability`` and ``/score`` of a
multinomial model are (n, K)); CSV with a header line; ``.npy`` with one (n, columns) float64 matrix whose
column names are the CSV header's.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from pgd.comm.host import collectively
from pgd.device.backend import cpu_backend
from pgd.errors import InputError
from pgd.evaluation.metrics import classification_metrics, multiclass_metrics, regression_metrics
from pgd.fileio import atomic_h5_file, atomic_path, check_writable, refuse_same_files
from pgd.loader.classes import count_classes
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

    Squared loss: mse, rmse, mae, r2. Logistic loss: log_loss, accuracy, roc_auc. Multinomial: log_loss,
    accuracy, macro_f1, confusion (rows true classes, columns predicted).
    """
    model, slab, scores = _model_and_scores(world, model_path, data_path, x_key=x_key, y_key=y_key,
                                            locking=locking, require_y=True, weight_key=weight_key)
    if model.loss == "multinomial":
        count_classes(world, slab.y, slab.start, slab.meta.n, data_path, model.n_classes, "the model's classes:")
        metrics = multiclass_metrics(slab.y, scores, world, weight=slab.weight)
    elif model.loss == "logistic":
        with collectively(world):
            if np.any((slab.y != 0) & (slab.y != 1)):
                raise InputError(f"{data_path}: labels must be 0 or 1 to evaluate a logistic model")
        metrics = classification_metrics(slab.y, scores, world, weight=slab.weight)
    else:
        metrics = regression_metrics(slab.y, scores, world, weight=slab.weight)
    return {"model": model_path, "data": data_path, "loss": model.loss, "ranks": world.Get_size(),
            "weights": slab.weight_source, **metrics}


PREDICTION_FORMATS = ("h5", "csv", "npy")


def prediction_columns(model, scores, threshold: float | None = None) -> dict:
    """``{name: (n_local,) or (n_local, K) values}`` that ``pgd predict`` writes for ``scores``.

    Squared: ``prediction``.  Logistic: ``prediction`` (probability of class 1), ``score`` and ``label``
    (1 where the probability is at least ``threshold``, 0.5 by default).  Multinomial: ``label`` (the class
    index of the largest probability, which indexes the model's ``classes``), ``probability`` (n, K) and
    ``score`` (n, K).
    """
    if threshold is not None and model.loss != "logistic":
        raise InputError(f"--threshold applies to binary (logistic) models; this model's loss is {model.loss}",
                         collective=True)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold must be in (0, 1), got {threshold:g}", collective=True)
    if model.loss == "multinomial":
        probability = get_loss(model.loss).link(scores, np)
        return {"label": probability.argmax(axis=1).astype(np.float64), "probability": probability, "score": scores}
    columns = {"prediction": get_loss(model.loss).link(scores, np)}
    if model.loss == "logistic":
        columns["score"] = scores
        columns["label"] = (columns["prediction"] >= (0.5 if threshold is None else threshold)).astype(np.float64)
    return columns


def column_names(columns: dict) -> list:
    """Flat column names: ``probability_0 .. probability_{K-1}`` for a (n, K) column."""
    names = []
    for name, values in columns.items():
        names += [name] if np.ndim(values) == 1 else [f"{name}_{k}" for k in range(np.shape(values)[1])]
    return names


def predict_model(world, model_path: str, data_path: str, out: str, *, x_key="X", y_key="y",
                  locking="best-effort", out_label: str = "--out", fmt: str = "h5",
                  threshold: float | None = None) -> dict:
    """Write the predictions of :func:`prediction_columns` to ``out`` as ``fmt`` (h5, csv or npy).

    ``out_label`` names the output in messages (``"--out (from PGD_PREDICT_OUT)"``).
    """
    rank = world.Get_rank()
    if fmt not in PREDICTION_FORMATS:
        raise InputError(f"--format must be one of {', '.join(PREDICTION_FORMATS)}, got {fmt!r}", collective=True)
    with collectively(world):
        if rank == 0:
            refuse_same_files({"the model file": model_path, "the data file": data_path}, {out_label: out})
            check_writable(out, "prediction file")
    model, slab, scores = _model_and_scores(world, model_path, data_path, x_key=x_key, y_key=y_key,
                                            locking=locking, require_y=False)
    columns = prediction_columns(model, scores, threshold)
    widths = [1 if np.ndim(values) == 1 else np.shape(values)[1] for values in columns.values()]
    block = np.ascontiguousarray(np.column_stack(list(columns.values())).T) if slab.n_local else \
        np.empty((sum(widths), 0))
    n = slab.n_global
    ranges = world.allgather((slab.start, slab.stop))   # block rows (dense) or nnz-balanced rows (CSR)
    layout = {"names": list(columns), "widths": widths}
    with collectively(world):  # a failed write (disk full) is one line on every rank
        if rank != 0:
            world.Send(block, dest=0, tag=7)
        else:
            _write_predictions(world, out, layout, block, n,
                               {"model": model_path, "data": data_path, "loss": model.loss}, ranges, fmt)
    return {"model": model_path, "data": data_path, "out": out, "n": n, "columns": column_names(columns),
            "format": fmt}


class _Sink:
    """Where rank 0 writes prediction rows ``[start, stop)``: an HDF5 file, a CSV file or a .npy matrix."""

    def __init__(self, handle, fmt: str, layout: dict, n: int, attrs: dict):
        self.fmt, self.layout = fmt, layout
        self.names = column_names({name: np.empty((0,) if width == 1 else (0, width))
                                   for name, width in zip(layout["names"], layout["widths"])})
        if fmt == "h5":
            handle.attrs.update(attrs)
            self.datasets = [handle.create_dataset(name, shape=(n,) if width == 1 else (n, width), dtype=np.float64)
                             for name, width in zip(layout["names"], layout["widths"])]
        elif fmt == "csv":
            handle.write(",".join(self.names) + "\n")
        self.handle = handle

    def write(self, start: int, stop: int, block: np.ndarray) -> None:
        if self.fmt == "h5":
            row = 0
            for dataset, width in zip(self.datasets, self.layout["widths"]):
                dataset[start:stop] = block[row] if width == 1 else block[row:row + width].T
                row += width
        elif self.fmt == "csv":
            np.savetxt(self.handle, block.T, delimiter=",", fmt="%.17g")
        else:
            self.handle[start:stop] = block.T


def _open_sink(stack, out: str, fmt: str, layout: dict, n: int, attrs: dict) -> _Sink:
    if fmt == "h5":
        return _Sink(stack.enter_context(atomic_h5_file(out, "prediction file")), fmt, layout, n, attrs)
    temporary = stack.enter_context(atomic_path(out, "prediction file"))
    if fmt == "csv":
        return _Sink(stack.enter_context(open(temporary, "w", encoding="utf-8")), fmt, layout, n, attrs)
    matrix = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float64, shape=(n, sum(layout["widths"])))
    stack.callback(matrix.flush)
    return _Sink(matrix, fmt, layout, n, attrs)


def _write_predictions(world, out: str, layout: dict, own_block: np.ndarray, n: int, attrs: dict,
                       ranges: list, fmt: str = "h5") -> None:
    """Rank 0: receive every rank's block in turn and write it; every block is received even when the
    write fails (the senders never wait forever), then the error is raised."""
    size = world.Get_size()
    rows = sum(layout["widths"])
    pending = iter(range(1, size))
    try:
        with ExitStack() as stack:
            sink = _open_sink(stack, out, fmt, layout, n, attrs)
            for source in range(size):
                block = own_block if source == 0 else _receive(world, next(pending), rows, ranges)
                start, stop = ranges[source]
                sink.write(start, stop, block)
    finally:
        for source in pending:
            _receive(world, source, rows, ranges)


def _receive(world, source: int, rows: int, ranges: list) -> np.ndarray:
    start, stop = ranges[source]
    block = np.empty((rows, stop - start), dtype=np.float64)
    world.Recv(block, source=source, tag=7)
    return block
