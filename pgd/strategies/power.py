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
