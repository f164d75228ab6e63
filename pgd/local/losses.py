"""Pointwise losses: pure functions of (y, raw prediction); the local gradient is :mod:`pgd.local.linear`.

The objective of the whole product is

    f(w, b) = (1/n) * sum_i loss(y_i, x_i . w + b) + (lam/2) * ||w||^2      (intercept unpenalised)

This module only computes the *local sums* over the rows a rank holds; the communicator adds them over
ranks, and the caller divides by the global row count and adds the penalty (see DESIGN.md, "Local sums,
global normalisation").

Conventions
-----------
- ``xp`` is the array namespace (``numpy`` or ``cupy``) and is always passed in; cupy is never imported.
- ``X`` is ``(n_local, d)`` C-contiguous, float32 or float64; ``y``, ``z`` (raw predictions
  ``X @ w + b``) and scratch buffers are ``(n_local,)`` or ``(block_rows,)`` in the same dtype.
- ``w`` is a ``(d,)`` vector in the data dtype; ``b`` is a Python float.
- Local results go into a caller-provided float64 vector ``out`` of length ``d + 2``:
  ``out[:d]`` the gradient-like sum over rows, ``out[d]`` its intercept component (0 without
  intercept), ``out[d + 1]`` a scalar sum (the loss, or ``||X~ v||^2`` for :meth:`gram_matvec`).
  ``out`` is overwritten, never accumulated into.
- Logistic labels are in {0, 1}.
- Optional sample weights ``s`` (``(n_local,)``, data dtype, non-negative) multiply every row's loss and
  derivative: the local sums become ``Σ s_i loss_i`` and ``Σ s_i loss'_i x_i``; the caller divides by the
  global ``Σ s_i`` instead of ``n``.
- Scalar sums (losses, residual sums) are accumulated in float64 (pairwise summation) whatever the data
  dtype, so float32 data loses nothing to the summation of its rows.
"""

from __future__ import annotations

import math

from pgd.local.multinomial import MultinomialLoss

__all__ = [
    "sum64",
    "SquaredLoss",
    "LogisticLoss",
    "MultinomialLoss",
    "LOSSES",
    "get_loss",
]


def _log_min_exp_argument(xp, dtype) -> float:
    """Most negative argument whose ``exp`` is still a normal number of ``dtype``.

    Clipping ``-|z|`` here keeps ``exp`` from underflowing (which ``np.errstate(under="raise")``
    would report) while changing nothing visible: ``exp`` of it is below machine epsilon.
    """
    return math.log(float(xp.finfo(dtype).tiny)) + 1.0


def sum64(values, xp) -> float:
    """``Σ values`` accumulated in float64 (pairwise), for float32 and float64 arrays alike."""
    return float(xp.sum(values, dtype=xp.float64))


class SquaredLoss:
    """Half squared error ``loss(y, z) = (z - y)^2 / 2``, derivative ``z - y``."""

    name = "squared"
    curvature_bound = 1.0  # sup_z d^2 loss / dz^2

    def pointwise(self, y, z, xp):
        """Loss of every row, ``(z - y)^2 / 2``."""
        residual = z - y
        return 0.5 * residual * residual

    def derivative(self, y, z, xp):
        """Derivative ``d loss / d z = z - y`` of every row."""
        return z - y

    def sum_and_derivative(self, y, z, work, xp, weight=None) -> float:
        """Overwrite ``z`` with ``d loss / d z`` (times ``weight``) and return the (weighted) summed loss,
        without allocating.

        Parameters
        ----------
        y : array, (m,)
            Targets.
        z : array, (m,)
            Raw predictions on entry, derivative on exit.
        work : array, (m,)
            Scratch buffer of the same shape and dtype.
        xp : module
            Array namespace.
        weight : array, (m,), optional
            Sample weights.

        Returns
        -------
        float
            ``sum_i s_i loss(y_i, z_i)`` (``s_i = 1`` without weights).
        """
        xp.subtract(z, y, out=z)
        xp.multiply(z, z, out=work)
        if weight is not None:
            xp.multiply(work, weight, out=work)
            xp.multiply(z, weight, out=z)
        return 0.5 * sum64(work, xp)

    def link(self, z, xp):
        """Prediction from raw scores (identity)."""
        return z

    def __repr__(self) -> str:
        return "SquaredLoss()"


class LogisticLoss:
    """Binary cross-entropy on raw scores, labels in {0, 1}.

    ``loss(y, z) = log(1 + exp(z)) - y z = max(z, 0) + log1p(exp(-|z|)) - y z``, derivative
    ``sigmoid(z) - y``.  Both are computed from ``e = exp(-|z|) <= 1``, so nothing overflows for any
    finite ``z``.
    """

    name = "logistic"
    curvature_bound = 0.25  # sup_z sigmoid'(z)

    @staticmethod
    def _exp_neg_abs(z, xp):
        """``exp(-|z|)``, clipped below so it never underflows."""
        neg_abs = xp.maximum(-xp.abs(z), _log_min_exp_argument(xp, z.dtype))
        return xp.exp(neg_abs)

    def pointwise(self, y, z, xp):
        """Loss of every row, ``max(z, 0) + log1p(exp(-|z|)) - y z``."""
        return xp.maximum(z, 0) - y * z + xp.log1p(self._exp_neg_abs(z, xp))

    def link(self, z, xp):
        """Probability ``sigmoid(z)``, computed without overflow."""
        e = self._exp_neg_abs(z, xp)
        return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))

    def derivative(self, y, z, xp):
        """Derivative ``d loss / d z = sigmoid(z) - y`` of every row."""
        return self.link(z, xp) - y

    def sum_and_derivative(self, y, z, work, xp, weight=None) -> float:
        """Overwrite ``z`` with ``sigmoid(z) - y`` (times ``weight``) and return the (weighted) summed
        loss, without allocating.

        One ``exp(-|z|)`` serves loss and derivative.  The sign of ``z`` is carried through the
        computation as the sign of ``+-exp(-|z|)`` (never zero thanks to the clipping), because only
        two buffers are available.  ``max(z, 0) - y z`` is summed as ``z (H(z) - y)``, whose terms
        are all non-negative, so no cancellation occurs for well-fitted rows with large ``|z|``.

        Parameters
        ----------
        y : array, (m,)
            Labels in {0, 1} (values in [0, 1] also work).
        z : array, (m,)
            Raw scores on entry, derivative on exit.
        work : array, (m,)
            Scratch buffer of the same shape and dtype.
        xp : module
            Array namespace.
        weight : array, (m,), optional
            Sample weights.

        Returns
        -------
        float
            ``sum_i s_i loss(y_i, z_i)`` (``s_i = 1`` without weights).
        """
        # work = z (H(z) - y), with H(z) = 1 - signbit(z) (so H(+0) = 1, H(-0) = 0, matching copysign below)
        xp.signbit(z, out=work)
        xp.subtract(1, work, out=work)
        xp.subtract(work, y, out=work)
        xp.multiply(work, z, out=work)
        if weight is not None:
            xp.multiply(work, weight, out=work)
        linear_part = sum64(work, xp)  # sum of max(z, 0) - y z
        # work = +-e with e = exp(-|z|) and the sign of z
        xp.abs(z, out=work)
        xp.negative(work, out=work)
        xp.maximum(work, _log_min_exp_argument(xp, z.dtype), out=work)
        xp.exp(work, out=work)
        xp.copysign(work, z, out=work)
        # z is free now: sum of log1p(e)
        xp.abs(work, out=z)
        xp.log1p(z, out=z)
        if weight is not None:
            xp.multiply(z, weight, out=z)
        softplus_part = sum64(z, xp)
        # work = +-t with t = e / (1 + e) = sigmoid(-|z|)
        xp.abs(work, out=z)
        xp.add(z, 1, out=z)
        xp.divide(work, z, out=work)
        # z = sigmoid(z) - y = H(z) - y - (+-t)
        xp.signbit(work, out=z)
        xp.subtract(1, z, out=z)
        xp.subtract(z, y, out=z)
        xp.subtract(z, work, out=z)
        if weight is not None:
            xp.multiply(z, weight, out=z)
        return linear_part + softplus_part

    def __repr__(self) -> str:
        return "LogisticLoss()"


#: The ``--loss`` choices.  ``multinomial`` (softmax cross-entropy over K classes, labels 0 .. K-1) has a
#: matrix of coefficients and its own local gradient, :class:`pgd.local.multinomial.LocalMultinomialGradient`.
LOSSES = {"squared": SquaredLoss, "logistic": LogisticLoss, "multinomial": MultinomialLoss}


def get_loss(name: str):
    """Return a loss instance by name.

    Parameters
    ----------
    name : {"squared", "logistic", "multinomial"}

    Raises
    ------
    ValueError
        If the name is unknown.
    """
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
