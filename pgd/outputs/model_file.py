"""The model file: ``/w``, ``/b``, ``/history`` and attributes describing how it was trained.

Layout
------
``/w`` (d,) float64, ``/b`` () float64 (a multinomial model: ``/w`` (d, K), ``/b`` (K,), attributes
``n_classes`` and ``classes``, the JSON list of the labels its probability columns stand for); optional
attribute ``feature_names`` (JSON list, from the data file's ``/feature_names``); ``/history/loss``,
``/history/grad_norm``, ``/history/time`` (seconds since the start of training, one entry per evaluated
iterate); root attributes ``pgd_model = 1``, ``loss``, ``l2``, ``fit_intercept``, ``optimizer``,
``iterations``, ``final_loss``, ``grad_norm``, ``converged``, ``stop_reason``, ``ranks``, ``device``,
``communicator``, ``pgd_version``, ``config`` (the resolved configuration as JSON) and the other run facts
passed in ``attrs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pgd.data.format import open_h5
from pgd.errors import InputError
from pgd.fileio import atomic_h5_file

MODEL_FORMAT = 1


@dataclass
class Model:
    """A trained model read back from its file."""

    w: np.ndarray
    b: float | np.ndarray
    loss: str
    attrs: dict

    @property
    def n_classes(self) -> int:
        """K of a multinomial model (its ``/w`` is (d, K)), 1 otherwise."""
        return self.w.shape[1] if self.w.ndim == 2 else 1

    @property
    def d(self) -> int:
        """Number of features."""
        return self.w.shape[0]


def _attr_value(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    if value is None:
        return "none"
    return value


def write_model(path: str, w: np.ndarray, b: float, attrs: dict, history: dict | None = None) -> None:
    """Write a model file atomically (temporary file, fsync, rename)."""
    with atomic_h5_file(path, "model file") as handle:
        handle.create_dataset("w", data=np.asarray(w, dtype=np.float64))
        handle.create_dataset("b", data=np.asarray(b, dtype=np.float64))
        handle.attrs["pgd_model"] = MODEL_FORMAT
        for key, value in attrs.items():
            handle.attrs[key] = _attr_value(value)
        for key, values in (history or {}).items():
            handle.create_dataset(f"history/{key}", data=np.asarray(values, dtype=np.float64))


def split_params(params, n_classes: int = 1):
    """``(w, b)`` of a flat parameter vector: ``[w, b]``, or the row-major ``(d + 1, K)`` matrix ``[W; b]``."""
    params = np.asarray(params, dtype=np.float64)
    if n_classes == 1:
        return params[:-1], float(params[-1])
    matrix = params.reshape(-1, n_classes)
    return matrix[:-1], matrix[-1]


def feature_names_of(path: str, d: int, key: str = "feature_names"):
    """The data file's ``/feature_names`` (d strings) or None when it has none (or not d of them)."""
    try:
        with open_h5(path, what="data file") as handle:
            if key not in handle:
                return None
            names = [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                     for value in handle[key][...].reshape(-1).tolist()]
    except InputError:
        return None
    return names if len(names) == d else None


def save_run_model(cfg, params, summary: dict, history: dict) -> None:
    """Write the model of a finished run: ``params`` (``[w, b]``, or ``[W; b]`` flat with ``n_classes`` in the
    summary), the summary (less the output paths) and the resolved configuration as attributes, the data
    file's feature names when it has them, and the history."""
    attrs = {key: value for key, value in summary.items() if key not in ("out", "metrics")}
    attrs["config"] = cfg.to_json()
    names = feature_names_of(cfg.data, int(summary["d"])) if "d" in summary else None
    if names is not None:
        attrs["feature_names"] = names
    w, b = split_params(params, int(summary.get("n_classes") or 1))
    write_model(cfg.out, w, b, attrs, history)


def read_model(path: str) -> Model:
    """Read a model file, with one-line errors for anything that is not one."""
    with open_h5(path, what="model file") as handle:
        if "w" not in handle or "b" not in handle or "loss" not in handle.attrs:
            raise InputError(f"{path} is not a pgd model file (needs /w, /b and a 'loss' attribute)")
        w = np.asarray(handle["w"][...], dtype=np.float64)
        b = np.asarray(handle["b"][()], dtype=np.float64)
        attrs = {key: (value.item() if isinstance(value, np.generic) else value)
                 for key, value in handle.attrs.items()}
        loss = str(attrs["loss"])
        if loss == "multinomial":
            if w.ndim != 2 or b.shape != (w.shape[1],):
                raise InputError(f"{path}: a multinomial model needs /w (d, K) and /b (K,), found {w.shape} and "
                                 f"{b.shape}")
            return Model(w=w, b=b, loss=loss, attrs=attrs)
        if w.ndim != 1 or b.ndim != 0:
            raise InputError(f"{path}: /w must be a vector and /b a number, found shapes {w.shape} and {b.shape}")
        return Model(w=w, b=float(b), loss=loss, attrs=attrs)
