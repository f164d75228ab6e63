"""A trained model as a Python object: ``pgd.load_model(path)``, for use in a notebook or a service.

>>> model = pgd.load_model("model.h5")
>>> model.predict_proba(X)           # NumPy array or SciPy sparse matrix, (n, d)

The attributes follow scikit-learn's names: ``coef_`` ((d,) for squared and binary logistic, (K, d) for
multinomial, like ``LogisticRegression.coef_`` transposed to classes by rows), ``intercept_`` (a float, or
(K,)), ``classes_`` (the labels a classifier predicts, in the order of its probability columns), ``loss``,
``feature_names_`` (or None) and ``attrs`` (every fact the model file records about its training).
"""

from __future__ import annotations

import json

import numpy as np

from pgd.outputs.model_file import read_model

__all__ = ["LinearModel", "load_model"]


def _scores(X, coef, intercept):
    """``X coef^T + intercept`` for a dense or SciPy sparse ``X`` (float64)."""
    if hasattr(X, "tocsr"):            # SciPy sparse: the product stays sparse-aware
        product = X.tocsr() @ coef.T
        return np.asarray(product, dtype=np.float64) + intercept
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    return X @ coef.T + intercept


class LinearModel:
    """A linear, binary logistic or multinomial model read from a pgd model file.

    Parameters
    ----------
    coef : ndarray
        (d,) or (K, d) coefficients on the original feature scale.
    intercept : float or ndarray
        Intercept(s).
    loss : {"squared", "logistic", "multinomial"}
        The training loss (decides the link).
    classes : list, optional
        Class labels of a classifier (default ``[0, 1]`` or ``0 .. K-1``).
    feature_names : list of str, optional
        Column names of the training data.
    attrs : dict, optional
        The model file's attributes.
    """

    def __init__(self, coef, intercept, loss: str, *, classes=None, feature_names=None, attrs=None):
        self.coef_ = np.asarray(coef, dtype=np.float64)
        self.intercept_ = intercept if np.ndim(intercept) else float(intercept)
        self.loss = loss
        self.feature_names_ = list(feature_names) if feature_names is not None else None
        self.attrs = dict(attrs or {})
        if loss == "multinomial":
            self.classes_ = np.asarray(classes if classes is not None else range(self.coef_.shape[0]))
        elif loss == "logistic":
            self.classes_ = np.asarray(classes if classes is not None else [0, 1])
        else:
            self.classes_ = None

    @property
    def n_features_in_(self) -> int:
        """Number of features the model expects."""
        return self.coef_.shape[-1]

    def _check(self, X) -> None:
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model expects {self.n_features_in_}")

    def decision_function(self, X) -> np.ndarray:
        """Raw scores ``X w + b`` ((n,), or (n, K) for multinomial)."""
        self._check(X)
        return _scores(X, self.coef_, self.intercept_)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, 2) for binary logistic or (n, K) for multinomial."""
        scores = self.decision_function(X)
        if self.loss == "logistic":
            positive = np.where(scores >= 0, 1 / (1 + np.exp(-np.abs(scores))),
                                np.exp(-np.abs(scores)) / (1 + np.exp(-np.abs(scores))))
            return np.column_stack([1 - positive, positive])
        if self.loss == "multinomial":
            scores = scores - scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            return scores / scores.sum(axis=1, keepdims=True)
        raise AttributeError("predict_proba needs a classifier (logistic or multinomial loss)")

    def predict(self, X, threshold: float = 0.5) -> np.ndarray:
        """Predicted values (squared loss) or class labels (``threshold`` on P(class 1) for binary)."""
        if self.loss == "squared":
            return self.decision_function(X)
        proba = self.predict_proba(X)
        if self.loss == "logistic":
            return self.classes_[(proba[:, 1] >= threshold).astype(np.int64)]
        return self.classes_[proba.argmax(axis=1)]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.coef_.shape)
        return f"LinearModel(loss={self.loss!r}, coef_ {shape})"


def _json_list(value):
    if value is None or value == "none":
        return None
    return json.loads(value) if isinstance(value, str) else list(value)


def load_model(path: str) -> LinearModel:
    """Read a pgd model file into a :class:`LinearModel` (one-line :class:`pgd.errors.InputError` when
    ``path`` is not one)."""
    model = read_model(path)
    coef = model.w.T if model.w.ndim == 2 else model.w
    return LinearModel(coef, model.b, model.loss, classes=_json_list(model.attrs.get("classes")),
                       feature_names=_json_list(model.attrs.get("feature_names")), attrs=model.attrs)
