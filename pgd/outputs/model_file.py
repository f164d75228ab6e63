"""The model file: ``/w``, ``/b``, ``/history`` and attributes describing how it was trained.

Layout
------
``/w`` (d,) float64, ``/b`` () float64; ``/history/loss``, ``/history/grad_norm``, ``/history/time``
(seconds since the start of training, one entry per evaluated iterate); root attributes ``pgd_model = 1``,
``loss``, ``l2``, ``fit_intercept``, ``optimizer``, ``iterations``, ``final_loss``, ``grad_norm``,
``converged``, ``stop_reason``, ``ranks``, ``device``, ``communicator``, ``pgd_version``, ``config``
(the resolved configuration as JSON) and the other run facts passed in ``attrs``.
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
    b: float
    loss: str
    attrs: dict

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
        handle.create_dataset("b", data=np.float64(b))
        handle.attrs["pgd_model"] = MODEL_FORMAT
        for key, value in attrs.items():
            handle.attrs[key] = _attr_value(value)
        for key, values in (history or {}).items():
            handle.create_dataset(f"history/{key}", data=np.asarray(values, dtype=np.float64))


def save_run_model(cfg, params, summary: dict, history: dict) -> None:
    """Write the model of a finished run: ``params = [w, b]``, the summary (less the output paths) and the
    resolved configuration as attributes, and the history."""
    attrs = {key: value for key, value in summary.items() if key not in ("out", "metrics")}
    attrs["config"] = cfg.to_json()
    write_model(cfg.out, params[:-1], params[-1], attrs, history)


def read_model(path: str) -> Model:
    """Read a model file, with one-line errors for anything that is not one."""
    with open_h5(path, what="model file") as handle:
        if "w" not in handle or "b" not in handle or "loss" not in handle.attrs:
            raise InputError(f"{path} is not a pgd model file (needs /w, /b and a 'loss' attribute)")
        w = np.asarray(handle["w"][...], dtype=np.float64)
        if w.ndim != 1:
            raise InputError(f"{path}: /w must be a vector, found shape {w.shape}")
        attrs = {key: (value.item() if isinstance(value, np.generic) else value)
                 for key, value in handle.attrs.items()}
        return Model(w=w, b=float(handle["b"][()]), loss=str(attrs["loss"]), attrs=attrs)
