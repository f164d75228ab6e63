"""Row weights kept out of the subnormal range before the gradient pass.

A gradient pass computes ``sum_i r_i x_i`` with row weights ``r_i`` (residuals, class probabilities).
Confidently fitted rows give tiny weights (float32 logistic rows scored below -87 have subnormal
``sigmoid(z)``), and on x86 every operation on a subnormal costs a microcode assist: such rows made the
compiled kernel 20x and BLAS's ``X.T @ r`` 18x slower (measured, Sapphire Rapids VM).  Weights below a
floor are therefore set to 0 by :func:`zero_tiny_weights` (the dense, CSR and multinomial NumPy paths, the
feature/hybrid grid) and in the compiled kernels (:func:`pgd.local.cpu_kernels._weight_floor`); GPUs handle
subnormals at full speed and are left alone.
"""

from __future__ import annotations

#: Row weights below ``tiny`` of their dtype times this are set to 0: a weight times an entry of ``X`` of
#: magnitude ``2^-26`` or more is then a normal number.  What is dropped, below ``8e-31`` (float32) or
#: ``1.5e-300`` (float64) per row, is below the rounding of any sum it enters.
ROW_WEIGHT_FLOOR_FACTOR = 2.0 ** 26


def zero_tiny_weights(weights, work, xp) -> None:
    """Set the entries of ``weights`` whose magnitude is below :data:`ROW_WEIGHT_FLOOR_FACTOR` times the
    dtype's smallest normal number to 0, in place; ``work`` is scratch of the same shape and dtype.  NaN
    stays NaN."""
    floor = float(xp.finfo(weights.dtype).tiny) * ROW_WEIGHT_FLOOR_FACTOR
    xp.abs(weights, out=work)
    xp.greater_equal(work, floor, out=work)
    xp.multiply(weights, work, out=weights)
