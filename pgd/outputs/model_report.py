"""``pgd model show``: what a model file says about itself, for people (text) and programs (JSON).

The report has four parts: how the model was trained (data, loss, penalties, optimizer, ranks, device), how
the run ended (converged or why not, iterations, final loss and gradient), the final and validation metrics
stored in the file, and the largest coefficients by magnitude with the feature names when they are known.
"""

from __future__ import annotations

import json

import numpy as np

__all__ = ["model_report", "format_model_report"]

TRAINING_KEYS = ("data", "n", "d", "loss", "n_classes", "classes", "l2", "l1", "fit_intercept", "penalty_scale",
                 "standardize", "sample_weight", "optimizer", "solver", "validation", "ranks", "device",
                 "communicator", "dtype", "pgd_version")
OUTCOME_KEYS = ("converged", "stop_reason", "iterations", "final_loss", "grad_norm", "optimality",
                "optimality_target", "best_iteration", "weights_from")


def _plain(value):
    """An attribute value as plain JSON-able Python (NumPy scalars, JSON strings decoded)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def model_report(model, top: int = 10) -> dict:
    """The report of a :class:`pgd.outputs.model_file.Model` as a JSON-able dict.

    Parameters
    ----------
    model : Model
        As read by ``read_model``.
    top : int
        How many of the largest coefficients to list (per class for multinomial models).
    """
    attrs = {key: _plain(value) for key, value in model.attrs.items()}
    names = attrs.get("feature_names")
    names = names if isinstance(names, list) else [f"x{j}" for j in range(model.w.shape[0])]
    w = model.w if model.w.ndim == 2 else model.w[:, None]
    columns = attrs.get("classes") if w.shape[1] > 1 else None
    largest = []
    for k in range(w.shape[1]):
        order = np.argsort(-np.abs(w[:, k]), kind="stable")[:top]
        entry = [{"feature": names[j], "index": int(j), "coef": float(w[j, k])} for j in order]
        largest.append({"class": columns[k] if columns else k, "coefficients": entry} if w.shape[1] > 1
                       else {"coefficients": entry})
    intercept = np.atleast_1d(model.b).tolist()
    return {
        "training": {key: attrs[key] for key in TRAINING_KEYS if key in attrs},
        "outcome": {key: attrs[key] for key in OUTCOME_KEYS if key in attrs},
        "metrics": {key: attrs[key] for key in ("train_metrics", "validation_metrics") if key in attrs},
        "intercept": intercept if len(intercept) > 1 else intercept[0],
        "largest_coefficients": largest,
        "warnings": attrs.get("warnings") or [],
    }


def _lines(title: str, values: dict) -> list:
    """``title`` and one aligned ``key  value`` line per entry."""
    width = max((len(key) for key in values), default=0)
    return [title] + [f"  {key:<{width}}  {value}" for key, value in values.items()]


def format_model_report(report: dict, path: str) -> str:
    """The report as aligned text."""
    out = [f"pgd model {path}"]
    out += _lines("trained", report["training"])
    out += _lines("outcome", report["outcome"])
    for name, metrics in report["metrics"].items():
        shown = {key: value for key, value in metrics.items() if key != "confusion"}
        out += _lines(name.replace("_", " "), shown)
    out.append(f"intercept  {report['intercept']}")
    for block in report["largest_coefficients"]:
        title = "largest coefficients" + (f" of class {block['class']}" if "class" in block else "")
        out.append(title)
        width = max((len(str(c["feature"])) for c in block["coefficients"]), default=0)
        out += [f"  {str(c['feature']):<{width}}  {c['coef']:+.6g}" for c in block["coefficients"]]
    out += [f"warning: {warning}" for warning in report["warnings"]]
    return "\n".join(out)
