"""Power iteration for the step size of ``--lr auto``, shared by every strategy."""

from __future__ import annotations

import math


def power_iteration(vector, image_of, dot, iterations: int) -> float:
    """Estimate the largest eigenvalue of a symmetric positive semi-definite operator.

    Parameters
    ----------
    vector : array
        Start vector (normalised here, in place); identical on every rank that holds it.
    image_of : callable
        ``image_of(v)`` -> the operator applied to ``v`` (same shape; may be a reused buffer).
    dot : callable
        Global inner product of two such vectors (``objective.dot``).
    iterations : int
        At most this many products; stops early when the estimate changes by <= 1e-4 relative.
    """
    vector /= math.sqrt(dot(vector, vector))
    eigenvalue = 0.0
    for _ in range(iterations):
        image = image_of(vector)
        previous, eigenvalue = eigenvalue, dot(vector, image)
        norm = math.sqrt(dot(image, image))
        if norm == 0.0:
            break
        vector = image / norm
        if abs(eigenvalue - previous) <= 1e-4 * eigenvalue:
            break
    return eigenvalue


def coefficient_diagonal(xp, n_params: int, n_coef: int, value: float):
    """A float64 vector of ``value`` on the first ``n_coef`` entries (the coefficients) and 0 on the rest (the
    intercepts): the L2 penalty's diagonal Hessian (``value = λ``) or the L1 factors (``value = 1``)."""
    vector = xp.full(n_params, value, dtype=xp.float64)
    vector[n_coef:] = 0.0
    return vector


def curvature_bound(objective, iterations: int, seed: int, penalty_diagonal=None) -> float:
    """Largest eigenvalue of ``c·G + P``: the loss's curvature bound ``c`` times the objective's Gram
    operator (``objective.gram_product``), plus the penalty's diagonal Hessian ``P``, by power iteration.

    This bounds the Lipschitz constant of the objective's gradient (``--lr auto`` takes ``1/L``).  The start
    vector comes from ``seed`` (``objective.start_vector``), identical on every rank for any rank count.
    """
    vector = objective.start_vector(seed)
    image = objective.xp.empty_like(vector)

    def image_of(v):
        objective.gram_product(v, image)
        image[...] *= objective.curvature
        if penalty_diagonal is not None:
            image[...] += penalty_diagonal * v
        return image

    return power_iteration(vector, image_of, objective.dot, iterations)
