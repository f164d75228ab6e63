"""Compiled one-pass CPU kernels (numba) for one rank's loss and gradient sums: dense rows and CSR.

One read of the data per evaluation: for each row ``i`` the kernel forms ``z_i = x_i . w + b``, the
pointwise loss and its derivative ``r_i``, and adds ``s_i r_i x_i`` to the gradient.  Rows go in blocks
that fit in L1 (dense) or of 256 rows (CSR): the block's scores, then its residuals and losses in one
vectorised loop (logistic ``exp``/``log1p`` written as polynomials), then the block's rows (non-zeros)
added into the gradient while still in cache.  Dense rows over :data:`LONG_ROW_BYTES` go in blocks that
stay in L2, each block's gradient pass running together with the next block's scores
(:func:`_dense_rows_long`).  The conventions are those of :mod:`pgd.local.losses`: losses
``squared`` (``(z - y)^2 / 2``, ``r = z - y``) and ``logistic`` (labels in {0, 1},
``max(z, 0) - y z + log1p(exp(-|z|))``, ``r = sigmoid(z) - y``, never overflowing), plus ``gram``
(``r = z``, scalar ``z^2``: the Gram product ``X~^T X~ v`` of the power iteration).

Numerics
--------
- The data is read in its own dtype (float32 or float64, never converted or copied).  With
  ``precision="float64"`` (default) every product and sum is float64; with ``precision="data"`` (float32
  data) a row's dot product and the combination of eight rows for the gradient are float32, as BLAS does
  (explicit eight-lane vectors: :mod:`pgd.local.simd`), and so are the dense kernel's logistic terms
  (:func:`_logistic_terms_float32`; a few float32 roundings, as large as the score's own).  Sums over rows
  (gradient, intercept, loss and weight sums) are float64 either way.
- Row weights below the subnormal floor (:func:`_weight_floor`) enter the gradient pass as 0, as in
  :mod:`pgd.local.subnormal`.
- Threads: rows are split into ``threads`` contiguous chunks (dense: equal rows; CSR: equal non-zeros,
  a pure function of ``indptr``).  Chunk ``t`` accumulates into its own float64 partial vector and the
  partials are added in chunk order, so a result is bit-for-bit reproducible for a given thread count and
  agrees to rounding across thread counts.  Chunks run on Python threads calling the compiled kernel
  with the GIL released (no numba threading layer, no global ``numba.set_num_threads`` state, nothing that
  competes with the BLAS's own threads); the calling thread runs chunk 0.  Memory: ``(threads - 1) * d``
  float64 partial vectors (dense and CSR alike: 8 MB per extra thread at d = 10^6), allocated once in a
  :class:`Workspace`.
- Reproducible reductions: the loops that reduce write only the scratch blocks, which sit at fixed 64-byte
  aligned offsets from each other, and read ``y`` and the weights (other allocations), so no run-time
  aliasing check sends a reduction down a differently rounded path depending on where memory happened to be.
- No atomic reference counts per block: the row functions borrow their arrays (:func:`_borrowed`: no
  reference count to keep), so the views they make and the arrays they pass to the functions they call once
  per block count nothing; and those functions are leaves whose own counts numba prunes (no calls, no
  views, one or two loops: :func:`_residual_terms`), but for the float32 logistic terms, whose counts find
  the borrowed arrays' null pointers.
- Standardisation does not reach the kernels: it is an O(d) transform of ``(w, b)`` and of the gradient
  around the objective (:mod:`pgd.strategies.standardize`).

Availability and fall-back
--------------------------
numba is imported with this module (import it lazily from the caller); kernels compile on first use and
are cached on disk (``cache=True``; numba's cache directory, or ``NUMBA_CACHE_DIR``), compiled again when
any of the kernels' sources changes (:mod:`pgd.local.kernel_cache`).  :func:`available`
says whether they can be used and :func:`unavailable_reason` says why not (numba missing, or a kernel that
failed to compile or failed its start-up check), so the caller takes today's blocked NumPy/BLAS path and
names the reason in the run summary.  :func:`warm_up` compiles (or loads) the kernels a run needs and
reports the seconds and whether the disk cache was hit.

API
---
- :func:`dense_loss_grad` and :func:`csr_loss_grad`: one evaluation into caller-provided buffers.
- :class:`FusedCPUGradient`: bound to one rank's slab, with the call convention of the GPU kernel
  (:class:`pgd.device.kernels.FusedGradient`): ``kernel(params, mode, out, rows=None)`` with
  ``params = [w, b]`` float64 and ``out`` the ``(d + 2,)`` float64 layout of
  :class:`pgd.local.linear.LocalLinearGradient`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pgd.local import kernel_cache
from pgd.local.simd import eight_rows_added, eight_scores, eight_scores_eight_added, prefetch_line
from pgd.local.subnormal import ROW_WEIGHT_FLOOR_FACTOR
from pgd.runtime import settings

try:  # numba is optional: without it the caller keeps the blocked NumPy/BLAS path
    import numba
except ImportError as exc:  # pragma: no cover - exercised by the fall-back test through a flag
    numba = None
    _IMPORT_PROBLEM = f"numba is not installed ({exc})"
else:
    _IMPORT_PROBLEM = ""

__all__ = [
    "LOSS_CODES",
    "DISABLE_ENV",
    "available",
    "unavailable_reason",
    "warm_up",
    "describe_start_up",
    "run_chunks",
    "Workspace",
    "dense_loss_grad",
    "csr_loss_grad",
    "csr_chunk_bounds",
    "dense_chunk_bounds",
    "dense_workspace",
    "csr_workspace",
    "PRECISIONS",
    "FusedCPUGradient",
]

#: Loss codes the kernels understand (``gram``: ``r = z``, scalar ``z^2``).
LOSS_CODES = {"squared": 0, "logistic": 1, "gram": 2}
#: ``PGD_CPU_KERNEL=blocked`` disables the kernels (the caller falls back), e.g. to compare the two paths or to
#: work around a broken numba install (read by :func:`pgd.runtime.settings.cpu_kernel`).
DISABLE_ENV = "PGD_CPU_KERNEL"

# Reassociation lets LLVM vectorise the dot product; no 'nnan'/'ninf' (inf and NaN must propagate).
_FASTMATH = {"reassoc", "contract"}


def _jit(function=None, *, fastmath=_FASTMATH, inline: str = "never"):
    """``numba.njit`` with the kernels' options (cached on disk, GIL released), or the function itself
    when numba is missing (it is then never called: :func:`available` is False).  ``inline="always"``
    inlines a small helper into its callers' loops (which then vectorise)."""
    if function is None:
        return lambda f: _jit(f, fastmath=fastmath, inline=inline)
    if numba is None:
        return function
    kernel_cache.install()
    return numba.njit(cache=True, nogil=True, fastmath=fastmath, error_model="numpy", inline=inline)(function)


def _define_prefetch():
    """``_prefetch(a, index)``: a software prefetch of the cache line holding element ``index`` of the
    C-contiguous array ``a`` (flat, in elements; :func:`pgd.local.simd.prefetch_line`).  A prefetch never
    faults and retires at once, so it can run ahead of the rows the loop is on."""
    if numba is None:
        return None
    from numba.extending import intrinsic  # noqa: PLC0415 - with numba only

    @intrinsic
    def prefetch(typingctx, array, index):
        if not isinstance(array, numba.types.Array) or not isinstance(index, numba.types.Integer):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            offset = context.cast(builder, args[1], signature.args[1], numba.types.intp)
            prefetch_line(builder, builder.gep(data, [offset]))
            return context.get_dummy_value()

        return numba.types.void(array, index), codegen

    return prefetch


_prefetch = _define_prefetch()


def _define_bits_as_float():
    """``_bits_as_float(bits)``: an int64 (int32) reinterpreted as the float64 (float32) with those bits
    (LLVM's ``bitcast``; ``2^-k`` is built with it).  A view of an int array as floats would do the same, but
    a view in a kernel can cost an atomic reference-count increment and decrement (numba's NRT) every call."""
    if numba is None:
        return None
    from numba.extending import intrinsic  # noqa: PLC0415 - with numba only

    @intrinsic
    def bits_as_float(typingctx, bits):
        if bits not in (numba.types.int64, numba.types.int32):
            return None
        result = numba.types.float64 if bits == numba.types.int64 else numba.types.float32

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(result))

        return result(bits), codegen

    return bits_as_float


_bits_as_float = _define_bits_as_float()


def _define_borrowed():
    """``_borrowed(a)``: the array ``a`` without its reference count (its NRT meminfo pointer set to null), or
    None for None.  A compiled function that makes a view of an array (``A[c]``) or passes an array to a
    function it calls can pay an atomic reference-count increment and decrement for it (numba's NRT, about
    10 ns each), unless numba's pruning pass removes the pair; on a borrowed array (and on its views) the
    counting finds a null pointer and does nothing.  Only for arrays the caller keeps alive for the whole
    call (the kernels' arguments), and never returned to Python."""
    if numba is None:
        return None
    from numba.core import cgutils  # noqa: PLC0415 - with numba only
    from numba.extending import intrinsic  # noqa: PLC0415 - with numba only

    @intrinsic
    def borrowed(typingctx, array):
        if isinstance(array, numba.types.NoneType):
            return array(array), lambda context, builder, signature, args: args[0]
        if not isinstance(array, numba.types.Array):
            return None

        def codegen(context, builder, signature, args):
            proxy = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
            proxy.meminfo = cgutils.get_null_value(proxy.meminfo.type)
            return proxy._getvalue()

        return array(array), codegen

    return borrowed


_borrowed = _define_borrowed()


# exp(-a) = 2^-k exp(-r), a = k ln2 + r, |r| <= ln2 / 2 (Cody-Waite split of ln 2)
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: ``|z|`` is clipped here: ``exp(-708)`` is still a normal float64 (pgd.local.losses clips likewise); what is
#: lost, ``exp(-|z|) < 3e-308``, is below rounding of any sum it enters.
_EXP_ARGUMENT_MAX = 708.0
#: ``log1p(e)`` is ``e`` times a factor (``2 / (2 + e)`` times the atanh series) evaluated at
#: ``max(e, this)``: below it the factor is 1.0 exactly either way, and the series' powers stay normal
#: numbers.  At ``e = exp(-|z|)`` itself they would be subnormal for ``|z|`` beyond about 180, and every
#: operation on a subnormal costs a microcode assist: on Intel 29-42 ns per score against 4.6 for the
#: whole logistic term (measured; Sapphire Rapids VM).
_LOG1P_SERIES_MIN = 1e-16

# The float32 logistic terms (float32 rows, precision="data": _logistic_terms_float32).  exp(-87) = 1.6e-38 is
# float32's last normal power of e (its smallest normal is 1.2e-38): beyond 87, exp(-|z|) counts as 0.
_EXP_ARGUMENT_MAX_FLOAT32 = 87.0
_LN2_HI_FLOAT32 = 0.693359375            # 355 / 512: n * this is exact for the n (<= 126) used here
_LN2_LO_FLOAT32 = -2.12194440e-4
#: As :data:`_LOG1P_SERIES_MIN` in float32: ``1 + 1e-8`` rounds to 1, and the series' powers stay normal.
_LOG1P_SERIES_MIN_FLOAT32 = 1e-8
_F32 = np.float32


@_jit(inline="always")
def _two_chains(x, e4, e3, e2, e1, e0, o4, o3, o2, o1, o0):
    """``(sum_i e_i x^i, sum_i o_i x^i)`` by Horner's rule, the two chains side by side (the even and odd
    terms of a polynomial in the square root of ``x``: two chains half as long as one, so a loop of them is
    bound by the latency of a chain, not by the arithmetic)."""
    even = e4
    odd = o4
    even = even * x + e3
    odd = odd * x + o3
    even = even * x + e2
    odd = odd * x + o2
    even = even * x + e1
    odd = odd * x + o1
    even = even * x + e0
    odd = odd * x + o0
    return even, odd


@_jit(inline="always")
def _exp_bits(a):
    """The bits of ``2^-k``, ``k = round(a / ln 2)``, for ``0 <= a <= 708`` (:func:`_bits_as_float` makes
    them the float64).  ``k``
    goes through int32: AVX2 converts four float64 to int32 in one instruction but has no such conversion to
    int64, which would leave every element of the vectorised loop to scalar code."""
    return (1023 - np.int64(np.int32(a * _LOG2E + 0.5))) << 52


@_jit(inline="always")
def _exp_minus(a, scale):
    """``exp(-a)`` for ``0 <= a <= 708``, ``scale`` being :func:`_exp_bits` of ``a`` as a float64:
    ``a = k ln2 + r`` (Cody-Waite), ``exp(-r)`` by a polynomial of degree 11 (a Chebyshev fit on
    ``|r| <= ln2/2``, error below 2e-17; the coefficients from mpmath at 50 digits), times ``2^-k``.  No
    calls, so a loop over a block of values vectorises.  The polynomial is evaluated as two Horner chains
    in ``t^2`` (its even and odd terms), each half as long as one chain in ``t``: the loop is bound by the
    latency of the chain, not by the arithmetic."""
    n = np.floor(a * _LOG2E + 0.5)
    t = (n * _LN2_HI - a) + n * _LN2_LO                      # -r
    t2 = t * t
    even, odd = _two_chains(t2, 2.7632639639041030e-07, 2.4801485482328494e-05, 1.3888888952314775e-03,
                            4.1666666666488100e-02, 5.0000000000000190e-01,
                            2.5110037605963777e-08, 2.7557240918578970e-06, 1.9841269890047113e-04,
                            8.3333333333196010e-03, 1.6666666666666680e-01)
    return (1.0 + (t + t2 * (even + t * odd))) * scale      # ~ 1 + t + t^2/2 + t^3/6 + ...


@_jit(inline="always")
def _atanh_series(v):
    """``atanh(u) / u`` for ``v = u^2 <= 1/9``: a polynomial of degree 10 in ``v`` (a Chebyshev fit, error
    below 3e-18; the Taylor series ``sum_i v^i / (2i + 1)`` needs degree 18), as two Horner chains in
    ``v^2``."""
    even, odd = _two_chains(v * v, 8.5220817813906990e-02, 6.0550843640346090e-02, 7.6933070211520040e-02,
                            1.1111112040373837e-01, 2.0000000000092874e-01,
                            4.1622532559304100e-02, 6.6501870163373130e-02, 9.0908704162524030e-02,
                            1.4285714272727057e-01, 3.3333333333333076e-01)
    return 1.0 + v * (odd + v * even)


@_jit(inline="always")
def _weight_floor(rbuf):
    """Row weights (residuals) below this are stored in ``rbuf`` as 0 (as
    :func:`pgd.local.subnormal.zero_tiny_weights` does): ``rbuf``'s smallest normal number times
    :data:`~pgd.local.subnormal.ROW_WEIGHT_FLOOR_FACTOR`, so no subnormal reaches the gradient pass (float32
    logistic rows scored between -100 and -80: 583 against 28 ms for scores in (-5, 5) before, measured)."""
    return np.finfo(rbuf.dtype).tiny * ROW_WEIGHT_FLOOR_FACTOR


@_jit(inline="always")
def _row_weight(value, floor):
    """``value`` to store as a row weight: itself, or 0 where ``|value| < floor`` (:func:`_weight_floor`)."""
    return value if abs(value) >= floor else 0.0


@_jit(inline="always")
def _logistic_residual(positive, e, inverse, y, one):
    """``sigmoid(z) - y`` from ``e = exp(-|z|)`` and ``inverse = 1 / (1 + e)``, as
    ``(1 - y) sigmoid(z) - y sigmoid(-z)``: for labels 0 and 1 one term is 0 and the other has no
    cancellation (``-e / (1 + e)`` where ``1 / (1 + e) - 1`` would round to 0 for a well-fitted row).
    ``one`` is 1 in the arithmetic's dtype (a literal 1 would make float32 arithmetic float64)."""
    small = e * inverse                                       # sigmoid(-|z|)
    return (one - y) * (inverse if positive else small) - y * (small if positive else inverse)


@_jit
def _logistic_terms_float64(z, y, weight, start, m, rbuf, lbuf):
    """Logistic terms of the ``m`` scores in ``z`` (rows ``start ...`` of ``y`` and ``weight``), in float64:
    ``z[k] <- s r`` with ``r = sigmoid(z) - y``, ``rbuf[k] <- s r`` (in ``rbuf``'s dtype), ``lbuf[k] <- s loss``
    with ``loss = max(z, 0) - y z + log1p(exp(-|z|))``; returns ``(sum s loss, sum s r, sum s)``.

    ``exp`` and ``log1p`` are polynomials written out here (no calls), so the loops over the block are
    vectorised: ``exp(-|z|)`` by :func:`_exp_minus` (its ``2^-k`` built from its bits:
    :func:`_exp_bits`); ``log1p(e) = 2 atanh(e / (2 + e))`` by :func:`_atanh_series`
    (``e / (2 + e) <= 1/3``).  ``exp`` has a loop of its own (its values go through ``lbuf``): two short
    loop bodies let the processor overlap more iterations than one long one.  Every term is non-negative,
    so nothing cancels for large ``|z|``; the loss of a fitted row with ``|z|`` beyond 708 is exact to
    rounding.  The sums are taken in the loop that writes (re-reading the block from a loop of its own cost
    about 70 ns per block, measured at 16 rows).  Two loops, no branches around them, no views: numba
    prunes the reference counts of the arguments (:func:`_residual_terms`); with a third loop it did not.
    """
    for k in range(m):
        a = min(abs(z[k]), _EXP_ARGUMENT_MAX)
        lbuf[k] = _exp_minus(a, _bits_as_float(_exp_bits(a)))                                    # exp(-|z|)
    floor = _weight_floor(rbuf)
    loss_sum = residual_sum = 0.0
    for k in range(m):
        zk = z[k]
        e = lbuf[k]
        series_at = max(e, _LOG1P_SERIES_MIN)
        half_inverse = 1.0 / (2.0 + series_at)
        u = series_at * half_inverse
        softplus = e * (2.0 * half_inverse) * _atanh_series(u * u)      # log1p(e) = 2 atanh(u), u = e / (2 + e)
        positive = zk >= 0.0
        yk = np.float64(_at(y, start, k))
        r = _logistic_residual(positive, e, 1.0 / (1.0 + e), yk, 1.0)
        loss = zk * ((1.0 if positive else 0.0) - yk) + softplus
        s = np.float64(_weight_at(weight, start, k))
        z[k] = r * s
        rbuf[k] = _row_weight(r * s, floor)
        lbuf[k] = loss * s
        loss_sum += loss * s
        residual_sum += r * s
    return loss_sum, residual_sum, _weight_sum(weight, start, m)


@_jit(inline="always")
def _exp_minus_float32(z):
    """``exp(-|z|)`` in float32 (0 for ``|z|`` beyond :data:`_EXP_ARGUMENT_MAX_FLOAT32`): ``|z| = n ln2 - t``
    (Cody-Waite), ``exp(t)`` by a least-squares fit of degree 6 on ``|t| <= ln2/2``, times ``2^-n`` built
    from its bits."""
    a = min(abs(z), _F32(_EXP_ARGUMENT_MAX_FLOAT32))
    n = np.floor(a * _F32(_LOG2E) + _F32(0.5))
    t = (n * _F32(_LN2_HI_FLOAT32) - a) + n * _F32(_LN2_LO_FLOAT32)              # -r
    p = _F32(0.00139486)
    p = p * t + _F32(0.00837513)
    p = p * t + _F32(0.04166622)
    p = p * t + _F32(0.16666415)
    p = p * t + _F32(0.50000001)
    p = p * t + _F32(1.00000004)
    p = p * t + _F32(1.0)
    power = _bits_as_float(np.int32((127 - np.int32(n)) << 23))                  # 2^-n
    return p * power if a < _F32(_EXP_ARGUMENT_MAX_FLOAT32) else _F32(0.0)


@_jit
def _logistic_terms_float32(z, y, weight, start, m, rbuf, lbuf):
    """:func:`_logistic_terms_float64` in float32, for float32 rows with ``precision="data"`` (their scores are
    float32 dot products, and their workspace holds ``rbuf`` and ``lbuf`` in float32): eight lanes to a
    vector where float64 has four, and shorter polynomials (least-squares fits for float32: ``exp`` to degree
    6, ``atanh(u)/u`` to degree 4 in ``u^2``; one division gives both ``1 / (1 + e)`` and ``1 / (2 + e)``).
    A term is within a few float32 roundings of the float64 one (its score's own rounding is as large); the
    sums are float64.  Scores beyond +-87 count as saturated (``exp(-|z|)`` below float32's normal numbers
    is 0).

    Four loops: the scores into ``rbuf`` as float32; ``exp(-|z|)`` into ``lbuf``
    (:func:`_exp_minus_float32`); the terms, reading and writing float32 only (every constant and operand
    float32: in numba ``1 - y`` with an integer 1 is float64, and one float64 operand halves the loop's
    lanes); then ``s r`` to ``z`` in float64, the weight floor and the float64 sums.  ``exp`` has its loop
    for the reason the float64 terms give: with it in the terms' loop, one iteration is a chain of some 50
    dependent operations, and the scheduler fills with operations that wait on it (in cache, 256 scores,
    interleaved in one process: 1.8 ns per score with the loop of its own against 2.2 without, bit for
    bit the same)."""
    for k in range(m):
        rbuf[k] = _F32(z[k])
    for k in range(m):
        lbuf[k] = _exp_minus_float32(rbuf[k])                                        # exp(-|z|)
    for k in range(m):
        zk = rbuf[k]
        e = lbuf[k]
        series_at = max(e, _F32(_LOG1P_SERIES_MIN_FLOAT32))
        one, two = _F32(1.0) + series_at, _F32(2.0) + series_at
        reciprocal = _F32(1.0) / (one * two)
        half_inverse = one * reciprocal                                              # 1 / (2 + e)
        v = series_at * half_inverse
        v = v * v
        factor = _F32(1.0) + v * (_F32(0.33333158) + v * (_F32(0.20012425) + v * (_F32(0.13980717)
                                                                                 + v * _F32(0.14087337))))
        softplus = e * (_F32(2.0) * half_inverse) * factor                           # log1p(e)
        positive = zk >= _F32(0.0)
        yk = _F32(_at(y, start, k))
        r = _logistic_residual(positive, e, two * reciprocal, yk, _F32(1.0))         # two * reciprocal: 1 / (1 + e)
        loss = zk * ((_F32(1.0) if positive else _F32(0.0)) - yk) + softplus
        s = _F32(_weight_at(weight, start, k))
        rbuf[k] = r * s
        lbuf[k] = loss * s
    floor = _F32(_weight_floor(rbuf))
    loss_sum = residual_sum = 0.0
    for k in range(m):
        rs = rbuf[k]
        z[k] = np.float64(rs)
        rbuf[k] = rs if abs(rs) >= floor else _F32(0.0)
        loss_sum += np.float64(lbuf[k])
        residual_sum += np.float64(rs)
    return loss_sum, residual_sum, _weight_sum(weight, start, m)


def _logistic_terms(z, y, weight, start, m, rbuf, lbuf):
    """The logistic terms of a block (compiled code only): :func:`_logistic_terms_float32` where the losses
    ``lbuf`` are float32 (float32 rows, ``precision="data"``), else :func:`_logistic_terms_float64`; chosen
    when the caller compiles."""
    raise NotImplementedError("compiled code only")


if numba is not None:
    @numba.extending.overload(_logistic_terms, inline="always")
    def _logistic_terms_for(z, y, weight, start, m, rbuf, lbuf):
        terms = _logistic_terms_float32 if lbuf.dtype == numba.types.float32 else _logistic_terms_float64
        return lambda z, y, weight, start, m, rbuf, lbuf: terms(z, y, weight, start, m, rbuf, lbuf)


@_jit(inline="always")
def _row_index(i):
    """Row ``i`` (never negative here) as an unsigned index: numba then leaves out the negative-index
    wrap-around, a compare and select per row that the compiler cannot hoist (10-25 % of the row loops at
    small ``d``, measured in cache)."""
    return np.uint64(i)


@_jit(inline="always")
def _at(a, start, k):
    """``a[start + k]`` through an unsigned index (:func:`_row_index`): a loop over ``k`` then reads ``a``
    contiguously (with a signed index numba's negative-index wrap-around compiles to a gather)."""
    return a[_row_index(start + k)]


def _weight_at(weight, start, k):
    """Row ``start + k``'s weight, 1.0 where ``weight`` is None (compiled code only; chosen by the type of
    ``weight`` when the caller compiles: numba does not prune ``weight is None`` branches in inlined code)."""
    raise NotImplementedError("compiled code only")


def _weight_sum(weight, start, m):
    """``sum s`` over rows ``start ... start + m - 1`` in float64, ``m`` where ``weight`` is None (compiled
    code only, as :func:`_weight_at`)."""
    raise NotImplementedError("compiled code only")


def _summed_weights(weight, start, m):
    """:func:`_weight_sum` of an array of weights."""
    total = 0.0
    for k in range(m):
        total += np.float64(_at(weight, start, k))
    return total


if numba is not None:
    @numba.extending.overload(_weight_at, inline="always")
    def _weight_at_for(weight, start, k):
        if isinstance(weight, numba.types.NoneType):
            return lambda weight, start, k: 1.0
        return lambda weight, start, k: _at(weight, start, k)

    @numba.extending.overload(_weight_sum, inline="always")
    def _weight_sum_for(weight, start, m):
        if isinstance(weight, numba.types.NoneType):
            return lambda weight, start, m: np.float64(m)
        return _summed_weights


@_jit(inline="always")
def _zero(grad):
    """``grad[:] = 0``."""
    for j in range(grad.shape[0]):
        grad[j] = 0.0


@_jit(inline="always")
def _plus(totals, sums):
    """``(loss, residual, weight)`` sums plus a block's."""
    return totals[0] + sums[0], totals[1] + sums[1], totals[2] + sums[2]


@_jit(inline="always")
def _residual_terms(z, y, weight, start, m, mode, rbuf, lbuf):
    """Terms of the ``m`` scores in ``z`` (rows ``start ...`` of ``y`` and ``weight``, which may be None):
    ``s r`` into ``z`` (float64) and ``rbuf`` (its dtype: the dtype the rows are combined in), ``s loss``
    into ``lbuf``; returns the block's ``(loss_sum, residual_sum, weight_sum)`` in float64.  ``mode``:
    0 squared (``(z - y)^2 / 2``, ``r = z - y``), 1 logistic, 2 Gram product (``z^2``, ``r = z``; ``y``
    unused).

    Inlined into the caller; the functions it calls (one per block) are leaves whose reference counts
    numba prunes.  A compiled function that calls another with arrays (or, by the pruning pass's
    heuristics, one with several loops or loops in branches) pays an atomic reference-count increment and
    decrement per array argument per call (numba's NRT), here once per block: about 100 ns, measured at 8
    rows (float64 d = 100 blocks are 16 rows).  The row functions also pass borrowed arrays
    (:func:`_borrowed`), on which any count left does nothing."""
    if mode == 1:
        return _logistic_terms(z, y, weight, start, m, rbuf, lbuf)
    if mode == 0:
        return _squared_terms(z, y, weight, start, m, rbuf, lbuf)
    return _gram_terms(z, weight, start, m, rbuf, lbuf)


@_jit
def _squared_terms(z, y, weight, start, m, rbuf, lbuf):
    """:func:`_residual_terms` of the squared loss.  The sums are taken in the loop that writes the terms (a
    vectorised reduction; every scratch block is a fixed distance from the others, so the loop's run-time
    aliasing checks come out the same in every run and so do the sums).  One loop, no branch around it:
    numba then prunes the reference counts of the arguments (:func:`_residual_terms`)."""
    floor = _weight_floor(rbuf)
    loss_sum = residual_sum = 0.0
    for k in range(m):
        r = z[k] - np.float64(_at(y, start, k))
        s = np.float64(_weight_at(weight, start, k))
        z[k] = r * s
        rbuf[k] = _row_weight(r * s, floor)
        lbuf[k] = 0.5 * r * r * s
        loss_sum += 0.5 * r * r * s
        residual_sum += r * s
    return loss_sum, residual_sum, _weight_sum(weight, start, m)


@_jit
def _gram_terms(z, weight, start, m, rbuf, lbuf):
    """:func:`_residual_terms` of the Gram product (``r = z``, scalar ``z^2``), as :func:`_squared_terms`."""
    floor = _weight_floor(rbuf)
    loss_sum = residual_sum = 0.0
    for k in range(m):
        r = z[k]
        s = np.float64(_weight_at(weight, start, k))
        z[k] = r * s
        rbuf[k] = _row_weight(r * s, floor)
        lbuf[k] = r * r * s
        loss_sum += r * r * s
        residual_sum += r * s
    return loss_sum, residual_sum, _weight_sum(weight, start, m)


@_jit(inline="always")
def _four_rows(X, i):
    """Views of rows ``i ... i + 3`` of ``X`` (unsigned indices: :func:`_row_index`)."""
    first, one = _row_index(i), np.uint64(1)
    return X[first], X[first + one], X[first + one + one], X[first + one + one + one]


@_jit(inline="always")
def _prefetch_share(ahead_lo, ahead_hi, m):
    """Elements of the prefetch range ``ahead_lo:ahead_hi`` to prefetch per group of four of ``m`` rows."""
    groups = max(1, m // 4)
    return (ahead_hi - ahead_lo + groups - 1) // groups


def _elements_per_line(X):
    """Elements of ``X`` in a 64-byte cache line (at least 1).  Compiled, a constant of ``X``'s type: from the
    array's run-time ``itemsize`` LLVM computed it with a division in every group of rows (it may not hoist a
    division by a value that could be 0); in cache, float32 d = 16, the kernel took 8-19 % longer."""
    return max(1, 64 // X.itemsize)


if numba is not None:
    @numba.extending.overload(_elements_per_line, inline="always")
    def _elements_per_line_for(X):
        elements = max(1, 512 // X.dtype.bitwidth)
        return lambda X: elements


@_jit(inline="always")
def _prefetch_lines(X, ahead, stop):
    """Prefetch the cache lines of ``X``'s flat elements ``ahead:stop``; returns where the next line starts.

    The next block is prefetched in two halves (:func:`_prefetch_spread`): the first while this block's
    scores are computed, the second while its rows are added into the gradient.  Both passes read this block
    from cache; without the prefetches the memory stream would stand idle until the next block's scores
    miss on it, and with all of them in one pass it stands idle during the other."""
    line = _elements_per_line(X)
    while ahead < stop:
        _prefetch(X, ahead)
        ahead += line
    return ahead


@_jit(inline="always")
def _four_dots_step(x0, x1, x2, x3, wj, j, z0, z1, z2, z3):
    """One column of four rows' dot products with ``w``: ``z_i + x_i[j] wj``."""
    return z0 + x0[j] * wj, z1 + x1[j] * wj, z2 + x2[j] * wj, z3 + x3[j] * wj


@_jit(inline="always")
def _four_rows_combined(x0, x1, x2, x3, r0, r1, r2, r3, j):
    """Element ``j`` of ``r0 x0 + r1 x1 + r2 x2 + r3 x3``, summed as two pairs."""
    return (r0 * x0[j] + r1 * x1[j]) + (r2 * x2[j] + r3 * x3[j])


@_jit(inline="always")
def _store_four_scores(z, k, b, z0, z1, z2, z3):
    """``z[k + i] = z_i + b`` for ``i < 4``, in float64."""
    z[k] = np.float64(z0) + b
    z[k + 1] = np.float64(z1) + b
    z[k + 2] = np.float64(z2) + b
    z[k + 3] = np.float64(z3) + b


@_jit(inline="always")
def _dense_scores_one_by_one(X, w, b, start, k, m, z):
    """``z[k'] = x_(start+k') . w + b`` for ``k <= k' < m``, a row at a time (the rows after the groups)."""
    d = X.shape[1]
    while k < m:
        x0 = X[_row_index(start + k)]
        z0 = w.dtype.type(0)
        for j in range(d):
            z0 += x0[j] * w[j]
        z[k] = np.float64(z0) + b
        k += 1


@_jit
def _dense_scores_loops(X, w, b, start, m, z, ahead_lo, ahead_hi):
    """``z[k] = x_(start+k) . w + b`` for ``k < m``, four rows per sweep of ``w``.  The products and the
    sums within a row are in ``w``'s dtype (float64 here: float32 products take :func:`_dense_scores_vectors`).
    Meanwhile the cache lines of ``X``'s flat elements ``ahead_lo:ahead_hi`` are prefetched, spread over the
    groups of four rows (:func:`_prefetch_spread`)."""
    d = X.shape[1]
    zero = w.dtype.type(0)
    share = _prefetch_share(ahead_lo, ahead_hi, m)
    ahead = ahead_lo
    k = 0
    while k + 4 <= m:
        ahead = _prefetch_lines(X, ahead, min(ahead_hi, ahead + share))
        x0, x1, x2, x3 = _four_rows(X, start + k)
        z0 = z1 = z2 = z3 = zero
        for j in range(d):
            z0, z1, z2, z3 = _four_dots_step(x0, x1, x2, x3, w[j], j, z0, z1, z2, z3)
        _store_four_scores(z, k, b, z0, z1, z2, z3)
        k += 4
    _prefetch_lines(X, ahead, ahead_hi)
    _dense_scores_one_by_one(X, w, b, start, k, m, z)


@_jit
def _dense_scores_vectors(X, w, b, start, m, z, ahead_lo, ahead_hi):
    """:func:`_dense_scores_loops` for float32 rows and ``w``: eight rows at a time in explicit vectors
    (:func:`pgd.local.simd.eight_scores`)."""
    share = _prefetch_share(ahead_lo, ahead_hi, m)
    ahead = ahead_lo
    k = 0
    while k + 8 <= m:
        ahead = _prefetch_lines(X, ahead, min(ahead_hi, ahead + 2 * share))
        eight_scores(X, start + k, w, z, k, b)
        k += 8
    _prefetch_lines(X, ahead, ahead_hi)
    _dense_scores_one_by_one(X, w, b, start, k, m, z)


def _dense_scores(X, w, b, start, m, z, ahead_lo, ahead_hi):
    """``z[k] = x_(start+k) . w + b`` for ``k < m`` (compiled code only), prefetching ``X``'s flat elements
    ``ahead_lo:ahead_hi`` meanwhile: :func:`_dense_scores_vectors` for float32 rows and ``w``
    (``precision="data"``), else :func:`_dense_scores_loops`; chosen when the caller compiles."""
    raise NotImplementedError("compiled code only")


@_jit(inline="always")
def _dense_accumulate_one_by_one(X, start, k, m, rbuf, grad):
    """``grad += rbuf[k'] x_(start+k')`` for ``k <= k' < m``, a row at a time (the rows after the groups)."""
    d = X.shape[1]
    while k < m:
        x0 = X[_row_index(start + k)]
        r0 = rbuf[k]
        for j in range(d):
            grad[j] += r0 * x0[j]
        k += 1


@_jit
def _dense_accumulate_loops(X, start, m, rbuf, grad, ahead_lo, ahead_hi):
    """``grad += sum_k rbuf[k] x_(start+k)``: four rows combined in ``rbuf``'s dtype (float64 products;
    float32 products take :func:`_dense_accumulate_vectors`), then added to the float64 ``grad`` (one load
    and store of ``grad`` per four rows).

    Meanwhile the cache lines of ``X``'s flat elements ``ahead_lo:ahead_hi`` are prefetched, spread over
    the groups of rows (:func:`_prefetch_spread`)."""
    d = X.shape[1]
    share = _prefetch_share(ahead_lo, ahead_hi, m)
    ahead = ahead_lo
    k = 0
    while k + 4 <= m:
        ahead = _prefetch_lines(X, ahead, min(ahead_hi, ahead + share))
        x0, x1, x2, x3 = _four_rows(X, start + k)
        r0, r1, r2, r3 = rbuf[k], rbuf[k + 1], rbuf[k + 2], rbuf[k + 3]
        for j in range(d):
            grad[j] += _four_rows_combined(x0, x1, x2, x3, r0, r1, r2, r3, j)
        k += 4
    _prefetch_lines(X, ahead, ahead_hi)
    _dense_accumulate_one_by_one(X, start, k, m, rbuf, grad)


@_jit
def _dense_accumulate_vectors(X, start, m, rbuf, grad, ahead_lo, ahead_hi):
    """:func:`_dense_accumulate_loops` for float32 rows and ``rbuf``: eight rows at a time in explicit
    vectors, combined in registers and added to ``grad`` (:func:`pgd.local.simd.eight_rows_added`)."""
    share = _prefetch_share(ahead_lo, ahead_hi, m)
    ahead = ahead_lo
    k = 0
    while k + 8 <= m:
        ahead = _prefetch_lines(X, ahead, min(ahead_hi, ahead + 2 * share))
        eight_rows_added(X, start + k, rbuf, k, grad)
        k += 8
    _prefetch_lines(X, ahead, ahead_hi)
    _dense_accumulate_one_by_one(X, start, k, m, rbuf, grad)


def _dense_accumulate(X, start, m, rbuf, grad, ahead_lo, ahead_hi):
    """``grad += sum_k rbuf[k] x_(start+k)`` (compiled code only), prefetching ``X``'s flat elements
    ``ahead_lo:ahead_hi`` meanwhile: :func:`_dense_accumulate_vectors` for float32 rows and ``rbuf``
    (``precision="data"``), else :func:`_dense_accumulate_loops`; chosen when the caller compiles."""
    raise NotImplementedError("compiled code only")


def _vector_types(X, vectors, outputs, dtypes) -> bool:
    """Whether (numba types) a call takes the explicit-vector functions (:mod:`pgd.local.simd`): rows ``X`` of
    one of ``dtypes``, the ``vectors`` they meet (``w``, ``rbuf``) of ``X``'s dtype, float64 ``outputs``,
    all contiguous.  The scores and the gradient pass take float32 only (float64 rows vectorise well in the
    loops); the one-sweep pair of long rows takes float64 too (it brings them its prefetch ahead)."""
    arrays = (X, *vectors, *outputs)
    return (eight_scores is not None and X.dtype in dtypes and all(v.dtype == X.dtype for v in vectors)
            and all(out.dtype == numba.types.float64 for out in outputs) and all(a.layout == "C" for a in arrays))


if numba is not None:
    @numba.extending.overload(_dense_scores, inline="always")
    def _dense_scores_for(X, w, b, start, m, z, ahead_lo, ahead_hi):
        vectors = _vector_types(X, (w,), (z,), (numba.types.float32,))
        scores = _dense_scores_vectors if vectors else _dense_scores_loops
        return lambda X, w, b, start, m, z, ahead_lo, ahead_hi: scores(X, w, b, start, m, z, ahead_lo, ahead_hi)

    @numba.extending.overload(_dense_accumulate, inline="always")
    def _dense_accumulate_for(X, start, m, rbuf, grad, ahead_lo, ahead_hi):
        vectors = _vector_types(X, (rbuf,), (grad,), (numba.types.float32,))
        accumulate = _dense_accumulate_vectors if vectors else _dense_accumulate_loops
        return lambda X, start, m, rbuf, grad, ahead_lo, ahead_hi: accumulate(
            X, start, m, rbuf, grad, ahead_lo, ahead_hi)


@_jit
def _dense_scores_accumulate_loops(X, w, b, ahead, z, start, rbuf, first, grad):
    """Two groups of eight rows in one sweep: ``z[first + k] = x_(ahead+k) . w + b`` for eight rows of the
    next block (read from memory) while ``sum_k rbuf[first + k] x_(start+k)`` over eight rows of this block
    (read back from cache) is added into ``grad``, so that the memory stream does not wait on the gradient
    pass.  (``first`` rather than views ``z[first:]``: a view costs an atomic reference count per call.)

    The eight rows are combined in ``rbuf``'s dtype (two groups of four, as :func:`_dense_accumulate_loops`
    combines four) and added to ``grad``.  Used for float32 rows with float64 products; rows, ``w`` and
    ``rbuf`` of one dtype take :func:`_dense_scores_accumulate_vectors`."""
    d = X.shape[1]
    zero = w.dtype.type(0)
    x0, x1, x2, x3 = _four_rows(X, ahead)
    x4, x5, x6, x7 = _four_rows(X, ahead + 4)
    c0, c1, c2, c3 = _four_rows(X, start)
    c4, c5, c6, c7 = _four_rows(X, start + 4)
    r0, r1, r2, r3 = rbuf[first], rbuf[first + 1], rbuf[first + 2], rbuf[first + 3]
    r4, r5, r6, r7 = rbuf[first + 4], rbuf[first + 5], rbuf[first + 6], rbuf[first + 7]
    z0 = z1 = z2 = z3 = z4 = z5 = z6 = z7 = zero
    for j in range(d):
        wj = w[j]
        z0, z1, z2, z3 = _four_dots_step(x0, x1, x2, x3, wj, j, z0, z1, z2, z3)
        z4, z5, z6, z7 = _four_dots_step(x4, x5, x6, x7, wj, j, z4, z5, z6, z7)
        grad[j] += (_four_rows_combined(c0, c1, c2, c3, r0, r1, r2, r3, j)
                    + _four_rows_combined(c4, c5, c6, c7, r4, r5, r6, r7, j))
    _store_four_scores(z, first, b, z0, z1, z2, z3)
    _store_four_scores(z, first + 4, b, z4, z5, z6, z7)


@_jit
def _dense_scores_accumulate_vectors(X, w, b, ahead, z, start, rbuf, first, grad):
    """:func:`_dense_scores_accumulate_loops` for rows, ``w`` and ``rbuf`` of one dtype (float32 or float64), in
    explicit vectors (:func:`pgd.local.simd.eight_scores_eight_added`, which also prefetches the streamed rows
    ahead: float64 d = 1000, one thread, against the GEMV, 1.04-1.16x with the loops, 0.94-1.02x with it)."""
    eight_scores_eight_added(X, ahead, w, z, first, b, start, rbuf, grad)


def _dense_scores_accumulate(X, w, b, ahead, z, start, rbuf, first, grad):
    """Scores of eight rows from ``ahead`` and eight rows from ``start`` added into ``grad``, in one sweep
    (compiled code only): :func:`_dense_scores_accumulate_vectors` for rows, ``w`` and ``rbuf`` of one dtype
    (:func:`_vector_types`), else :func:`_dense_scores_accumulate_loops`; chosen when the caller compiles."""
    raise NotImplementedError("compiled code only")


if numba is not None:
    @numba.extending.overload(_dense_scores_accumulate, inline="always")
    def _dense_scores_accumulate_for(X, w, b, ahead, z, start, rbuf, first, grad):
        vectors = _vector_types(X, (w, rbuf), (z, grad), (numba.types.float32, numba.types.float64))
        sweep = _dense_scores_accumulate_vectors if vectors else _dense_scores_accumulate_loops
        return lambda X, w, b, ahead, z, start, rbuf, first, grad: sweep(
            X, w, b, ahead, z, start, rbuf, first, grad)


@_jit(inline="always")
def _dense_overlapped(X, w, b, ahead, m_ahead, z, start, m, rbuf, grad):
    """The scores of the next block (``m_ahead`` rows from ``ahead``, into ``z``) and the gradient pass of
    this one (``m`` rows from ``start``, weights ``rbuf``), eight rows of each per sweep
    (:func:`_dense_scores_accumulate`); the rows left over after the common groups of eight (the last block
    of a chunk) go on their own (:func:`_dense_accumulate`, :func:`_dense_scores`)."""
    k = 0
    while k + 8 <= min(m, m_ahead):
        _dense_scores_accumulate(X, w, b, ahead + k, z, start + k, rbuf, k, grad)
        k += 8
    if k < m:
        _dense_accumulate(X, start + k, m - k, rbuf[k:], grad, 0, 0)
    if k < m_ahead:
        _dense_scores(X, w, b, ahead + k, m_ahead - k, z[k:], 0, 0)


@_jit(inline="always")
def _borrowed_rows(X, y, weight, w, grad, z, rbuf, lbuf):
    """The dense row functions' arrays, each :func:`_borrowed`: the functions they call once per block (or per
    eight rows), and the views they make, then pay no atomic reference counts."""
    return (_borrowed(X), _borrowed(y), _borrowed(weight), _borrowed(w), _borrowed(grad), _borrowed(z),
            _borrowed(rbuf), _borrowed(lbuf))


@_jit
def _dense_rows_long(X, y, weight, w, b, mode, lo, hi, grad, z, rbuf, lbuf):
    """:func:`_dense_rows` for rows longer than :data:`LONG_ROW_BYTES`: each block's gradient pass
    runs together with the next block's scores (:func:`_dense_overlapped`), so ``X`` streams from memory
    all the time, where one pass after the other leaves the memory idle during the gradient pass."""
    X, y, weight, w, grad, z, rbuf, lbuf = _borrowed_rows(X, y, weight, w, grad, z, rbuf, lbuf)
    _zero(grad)
    totals = (0.0, 0.0, 0.0)
    block = z.shape[0]
    start = lo
    m = min(block, hi - lo)
    if m <= 0:
        return totals
    _dense_scores(X, w, b, start, m, z, 0, 0)
    while True:
        totals = _plus(totals, _residual_terms(z, y, weight, start, m, mode, rbuf, lbuf))
        ahead = start + m
        if ahead >= hi:
            break
        m_ahead = min(block, hi - ahead)
        _dense_overlapped(X, w, b, ahead, m_ahead, z, start, m, rbuf, grad)
        start, m = ahead, m_ahead
    _dense_accumulate(X, start, m, rbuf, grad, 0, 0)
    return totals


#: Rows longer than this are "long": the kernel does not prefetch them (the hardware prefetcher follows long
#: rows by itself, and software prefetches only add work: one thread, squared, against the GEMV, d = 1000
#: float32 1.33x without them, 1.48x with; float64 1.34x against 1.62x), and the dense kernel overlaps each
#: block's gradient pass with the next block's scores (:func:`_dense_rows_long`).  Shorter rows gain from
#: the prefetches (d = 500 float32, 2000 bytes a row: 1.25x without, 1.06x with); docs/cpu_kernels.md.
LONG_ROW_BYTES = 2048


def long_rows(d: int, itemsize: int) -> bool:
    """Whether rows of ``d`` elements of ``itemsize`` bytes are longer than :data:`LONG_ROW_BYTES`."""
    return d * itemsize > LONG_ROW_BYTES


@_jit(inline="always")
def _prefetch_spread(X, start, hi, block):
    """The flat element range of ``X`` to prefetch while a block is worked on, rows ``start`` to
    ``min(hi, start + block)``, cut in two: ``(lo, middle, hi)``, the first half for the scores pass, the
    second for the gradient pass; nothing (``(0, 0, 0)``) for rows longer than :data:`LONG_ROW_BYTES`."""
    d = X.shape[1]
    if d * X.itemsize > LONG_ROW_BYTES:
        return 0, 0, 0
    lo, stop = start * d, min(hi, start + block) * d
    return lo, lo + (stop - lo) // 2, stop


@_jit
def _dense_rows(X, y, weight, w, b, mode, lo, hi, grad, z, rbuf, lbuf):
    """Sums over rows ``lo:hi`` of dense ``X`` into ``grad`` (overwritten, float64); returns
    ``(loss_sum, intercept_sum, weight_sum)``.  ``weight`` may be None (every row weighs 1).

    Rows go in blocks of ``len(z)`` (a block of ``X`` fits in L1): the block's scores, then its residuals
    (a vectorised loop), then its rows added into ``grad`` while still in cache; ``X`` is read from memory
    once.  ``z`` (float64), ``rbuf`` and ``lbuf`` (the dtype the rows are combined in) are scratch."""
    X, y, weight, w, grad, z, rbuf, lbuf = _borrowed_rows(X, y, weight, w, grad, z, rbuf, lbuf)
    _zero(grad)
    totals = (0.0, 0.0, 0.0)
    block = z.shape[0]
    for start in range(lo, hi, block):
        m = min(block, hi - start)
        ahead_lo, middle, ahead_hi = _prefetch_spread(X, start + m, hi, block)
        _dense_scores(X, w, b, start, m, z, ahead_lo, middle)
        totals = _plus(totals, _residual_terms(z, y, weight, start, m, mode, rbuf, lbuf))
        _dense_accumulate(X, start, m, rbuf, grad, middle, ahead_hi)
    return totals


@_jit(fastmath=False)   # reassociation would vectorise the dot into AVX-512 gathers: 3x slower on Zen 4
def _csr_scores(data, indices, indptr, w, b, start, m, z):
    """``z[k] = x_(start+k) . w + b`` over the non-zeros of CSR rows ``start ... start + m - 1``.

    Four partial sums per row (non-zeros ``p = 0, 1, 2, 3 mod 4``, added as ``(s0 + s1) + (s2 + s3)``):
    a single running sum would wait one FMA latency per non-zero, which bounds SciPy's CSR mat-vec."""
    four = np.uint64(4)
    for k in range(m):
        p = np.uint64(indptr[start + k])        # unsigned positions: no wrap-around check per access
        stop = np.uint64(indptr[start + k + 1])
        s0 = s1 = s2 = s3 = 0.0
        while p + four <= stop:
            s0 += data[p] * w[indices[p]]
            s1 += data[p + np.uint64(1)] * w[indices[p + np.uint64(1)]]
            s2 += data[p + np.uint64(2)] * w[indices[p + np.uint64(2)]]
            s3 += data[p + np.uint64(3)] * w[indices[p + np.uint64(3)]]
            p += four
        if p < stop:
            s0 += data[p] * w[indices[p]]
        if p + np.uint64(1) < stop:
            s1 += data[p + np.uint64(1)] * w[indices[p + np.uint64(1)]]
        if p + np.uint64(2) < stop:
            s2 += data[p + np.uint64(2)] * w[indices[p + np.uint64(2)]]
        z[k] = ((s0 + s1) + (s2 + s3)) + b


@_jit(fastmath=False)
def _csr_accumulate(data, indices, indptr, start, m, rbuf, grad):
    """``grad[indices] += rbuf[k] * data`` over the non-zeros of CSR rows ``start ... start + m - 1``."""
    for k in range(m):
        r = np.float64(rbuf[k])
        for p in range(np.uint64(indptr[start + k]), np.uint64(indptr[start + k + 1])):
            grad[indices[p]] += r * data[p]


@_jit
def _csr_rows(data, indices, indptr, y, weight, w, b, mode, lo, hi, grad, z, rbuf, lbuf):
    """Sums over CSR rows ``lo:hi`` into ``grad`` (overwritten, float64, length ``d``); returns
    ``(loss_sum, intercept_sum, weight_sum)``.  ``weight`` may be None.  ``indices`` are unsigned
    (a view of the validated signed indices), so no negative-index wrap-around check is compiled in.
    Blocks of ``len(z)`` rows: their scores (gather), residuals (vectorised), then the scatter, with the
    block's non-zeros still in cache."""
    data, indices, indptr, y, weight, w = (_borrowed(data), _borrowed(indices), _borrowed(indptr), _borrowed(y),
                                           _borrowed(weight), _borrowed(w))
    grad, z, rbuf, lbuf = _borrowed(grad), _borrowed(z), _borrowed(rbuf), _borrowed(lbuf)
    _zero(grad)
    totals = (0.0, 0.0, 0.0)
    block = z.shape[0]
    for start in range(lo, hi, block):
        m = min(block, hi - start)
        _csr_scores(data, indices, indptr, w, b, start, m, z)
        totals = _plus(totals, _residual_terms(z, y, weight, start, m, mode, rbuf, lbuf))
        _csr_accumulate(data, indices, indptr, start, m, rbuf, grad)
    return totals


# ---------------------------------------------------------------------------------------------------
# availability, compilation, cache


_state_lock = threading.Lock()
_problems: dict = {}        # "kind/dtype" -> "" (usable) or the reason it is not; absent: not checked yet
_warm_report: dict = {}
KINDS = ("dense", "csr")
DTYPES = ("float32", "float64")


def _env_disabled() -> bool:
    return settings.cpu_kernel() == "blocked"


def _keys(kind, dtype) -> list[str]:
    kinds = KINDS if kind is None else (kind,)
    dtypes = DTYPES if dtype is None else (np.dtype(dtype).name,)
    return [f"{k}/{t}" for k in kinds for t in dtypes]


def available(kind: str | None = None, dtype=None) -> bool:
    """Whether the compiled kernels can be used (numba present, kernels compiled and self-checked).

    ``kind`` (``"dense"`` or ``"csr"``) and ``dtype`` (float32 or float64) narrow the check to what a run
    uses (default: all four).  The first call for a kernel compiles it (or loads it from the disk cache)
    and checks it against NumPy on a small problem; later calls are free.
    """
    return unavailable_reason(kind, dtype) == ""


def unavailable_reason(kind: str | None = None, dtype=None) -> str:
    """Empty when :func:`available`; otherwise one line saying why the kernels are not used."""
    if _env_disabled():
        return f"compiled CPU kernels disabled by {DISABLE_ENV}=blocked"
    if _IMPORT_PROBLEM:
        return _IMPORT_PROBLEM
    with _state_lock:
        for key in _keys(kind, dtype):
            if key not in _problems:
                _problems[key] = _compile_and_check(*key.split("/"))
            if _problems[key]:
                return _problems[key]
    return ""


def _dispatchers() -> dict:
    return {"dense": (_dense_rows, _dense_rows_long), "csr": (_csr_rows,)}


def _cache_hits(*dispatchers) -> int:
    """Specialisations of ``dispatchers`` loaded from numba's disk cache so far."""
    hits = 0
    for dispatcher in dispatchers:
        stats = getattr(dispatcher, "stats", None)
        hits += sum(getattr(stats, "cache_hits", {}).values()) if stats is not None else 0
    return hits


def _compile_and_check(kind: str, dtype: str) -> str:
    """Compile (or load) one kernel's unweighted specialisations (both precisions), record the seconds and
    whether the disk cache served them, check them; '' when all is well."""
    try:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((19, 3)).astype(dtype)      # groups of eight and four rows, and single rows
        y = (rng.random(19) < 0.5).astype(dtype)
        w = rng.standard_normal(3)
        before, hits = time.perf_counter(), _cache_hits(*_dispatchers()[kind])
        problem = _self_check(kind, X, y, w)
        if not problem and kind == "dense":
            d = LONG_ROW_BYTES // X.itemsize + 1          # long rows: their kernel, over more than one block
            X = rng.standard_normal((dense_block_rows(d, X.itemsize) + 11, d)).astype(dtype)
            y = (rng.random(X.shape[0]) < 0.5).astype(dtype)
            problem = _self_check(kind, X, y, rng.standard_normal(d) / math.sqrt(d))
        _warm_report[f"{kind}/{dtype}"] = {"seconds": time.perf_counter() - before,
                                           "cache_hit": _cache_hits(*_dispatchers()[kind]) > hits}
    except Exception as exc:  # noqa: BLE001 - any compile failure means: fall back, and say why
        return f"compiled CPU kernels failed to compile ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return f"compiled CPU kernel failed its start-up check ({problem})" if problem else ""


def _self_check(kind: str, X, y, w) -> str:
    """Compare one evaluation per loss and precision with NumPy in float64; '' or what disagreed."""
    X64, y64, b = X.astype(np.float64), y.astype(np.float64), 0.25
    indptr = np.arange(0, X.size + 1, X.shape[1], dtype=np.int64)
    indices = np.tile(np.arange(X.shape[1], dtype=np.int32), X.shape[0])
    for precision in PRECISIONS:
        for loss in LOSS_CODES:
            if kind == "dense":
                loss_sum, grad, r_sum, _ = dense_loss_grad(X, y, w, b, loss, precision=precision)
            else:
                loss_sum, grad, r_sum, _ = csr_loss_grad(X.ravel(), indices, indptr, y, w, b, loss,
                                                         precision=precision)
            z = X64 @ w + b
            if loss == "squared":
                r, pointwise = z - y64, 0.5 * (z - y64) ** 2
            elif loss == "logistic":
                r, pointwise = 1 / (1 + np.exp(-z)) - y64, np.logaddexp(0, z) - y64 * z
            else:
                r, pointwise = z, z * z
            if not (np.allclose(grad, X64.T @ r, rtol=1e-5, atol=1e-5)
                    and math.isclose(r_sum, r.sum(), rel_tol=1e-5, abs_tol=1e-5)
                    and math.isclose(loss_sum, pointwise.sum(), rel_tol=1e-5, abs_tol=1e-5)):
                return f"{kind} {loss} {X.dtype} (precision {precision}) disagrees with NumPy"
    return ""


def describe_start_up(report: dict | None) -> str:
    """``"; loaded from its disk cache in 0.4 s"`` or ``"; compiled (cached on disk for later runs) in 7 s"``
    for a ``{"seconds", "cache_hit"}`` report (:func:`warm_up`); '' without one.  The run summary shows it
    beside the kernel."""
    if not report:
        return ""
    how = "loaded from its disk cache" if report["cache_hit"] else "compiled (cached on disk for later runs)"
    return f"; {how} in {report['seconds']:.2g} s"


def warm_up(kind: str | None = None, dtype=None) -> dict:
    """Compile (or load from the disk cache) the kernels (narrowed as in :func:`available`) and report, per
    ``"kind/dtype"``, the seconds it took and whether the disk cache was hit; ``{"problem": reason}`` when
    they are unavailable.

    The seconds of a cache hit are the load time; a miss includes compiling (count it in start-up).  The
    first call in a process also pays numba's own initialisation (about 0.4 s here), counted in the
    first entry.  Weighted specialisations compile on first use (not counted here)."""
    problem = unavailable_reason(kind, dtype)
    if problem:
        return {"problem": problem}
    return {key: _warm_report[key] for key in _keys(kind, dtype) if key in _warm_report}


# ---------------------------------------------------------------------------------------------------
# threads and buffers


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: start a new pool on first use."""
    global _pool, _pool_size
    _pool, _pool_size = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads (grown, never shrunk)."""
    global _pool, _pool_size
    with _state_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pgd-kernel")
            _pool_size = workers
        return _pool


#: Precisions of the products inside a row: ``float64`` (every product and sum in float64) or ``data``
#: (dense: a row's dot product and the combination of four rows in the data dtype, as BLAS does, then
#: float64; CSR: the products ``x_ij w_j`` in the data dtype, summed in float64).  Equal for float64 data.
PRECISIONS = ("float64", "data")


#: Bytes of dense rows per block (the block is re-read from L1 for the gradient).  16 KiB on every machine:
#: it leaves room in a 32 KiB L1 for ``w``, the gradient, the scratch and the next block arriving (on a Zen 3
#: VM, 32 KiB L1, 16 KiB blocks beat 32 KiB: float32 squared d = 100 1.12 -> 1.03x the GEMV), and on a 48 KiB
#: L1 (Sapphire Rapids VM, since the per-block reference counts went) 32 KiB blocks were no better: six cells
#: at one thread 0.96-1.79x with 16 KiB against 1.01-1.83x with 32 KiB.  (With the older kernel a Zen 4 VM,
#: 48 KiB L1, had favoured 32 KiB: larger blocks amortised the per-block costs; docs/cpu_kernels.md.)
DENSE_BLOCK_BYTES = 16 * 1024
#: Rows per block of the CSR kernel (gather, residuals, scatter).
CSR_BLOCK_ROWS = 256


#: Bytes per block for rows longer than :data:`LONG_ROW_BYTES`: blocks that stay in L2, from where the
#: gradient pass reads them back while the next block streams in (:func:`_dense_rows_long`).  Against
#: 64 KiB and 256 KiB, one thread: within the noise (d = 1000 float64 squared 1.14, 1.10, 1.09x the GEMV).
LONG_ROW_BLOCK_BYTES = 128 * 1024


def dense_block_rows(d: int, itemsize: int, block_bytes: int | None = None) -> int:
    """Rows per block of the dense kernel, 256 at most: about ``block_bytes`` of rows (by default
    :data:`DENSE_BLOCK_BYTES`, or :data:`LONG_ROW_BLOCK_BYTES` for rows longer than :data:`LONG_ROW_BYTES`)
    in a multiple of 8, the groups :func:`_dense_accumulate` and :func:`_dense_scores_accumulate` combine;
    where fewer than 8 rows fit, 4 (the scores pass's groups), and 8 for long rows (their sweeps)."""
    smallest = 4
    if block_bytes is None:
        block_bytes = DENSE_BLOCK_BYTES
        if long_rows(d, itemsize):
            block_bytes, smallest = LONG_ROW_BLOCK_BYTES, 8
    rows = block_bytes // max(1, d * itemsize)
    return int(min(256, rows - rows % 8 if rows >= 8 else smallest))


#: Scratch blocks start on multiples of this many bytes (a cache line, and the widest vector).
SCRATCH_ALIGNMENT = 64


def _aligned_blocks(threads: int, block: int, dtypes) -> list:
    """One ``(threads, block)`` array per dtype, carved from one buffer so that every row starts on a
    :data:`SCRATCH_ALIGNMENT` boundary at the same offsets in every run: the vectorised loops over them then
    split the same way every time (their reductions must not depend on where memory happened to be)."""
    row_bytes = -(-block * 8 // SCRATCH_ALIGNMENT) * SCRATCH_ALIGNMENT
    raw = np.empty(len(dtypes) * threads * row_bytes + SCRATCH_ALIGNMENT, dtype=np.uint8)
    first = -raw.ctypes.data % SCRATCH_ALIGNMENT
    arrays = []
    for index, dtype in enumerate(dtypes):
        start = first + index * threads * row_bytes
        rows = raw[start:start + threads * row_bytes].reshape(threads, row_bytes)
        arrays.append(rows.view(np.dtype(dtype))[:, :block])
    return arrays


class Workspace:
    """Preallocated buffers for ``threads`` chunks of a ``d``-column problem (allocate once, pass to every
    call): ``(threads - 1) * d`` float64 partial gradients, a copy of ``w`` in the product dtype, per
    chunk a block of scores (float64), residuals and losses (in the residual dtype: float32 ones take the
    float32 logistic terms, :func:`_logistic_terms_float32`), and (float32 products only) per chunk a row of
    ``d`` in which the dense kernel combines eight rows (:func:`_dense_accumulate`).

    Parameters
    ----------
    d : int
        Number of features.
    threads : int
        Chunks (and threads) the rows are split into; at least 1.
    block : int
        Rows per block.
    combine_dtype : dtype
        Dtype of the products inside a row (float64, or the data dtype with ``precision="data"``).
    residual_dtype : dtype, optional
        Dtype of the block's residuals (default ``combine_dtype``; the CSR kernel scatters in float64).
    """

    def __init__(self, d: int, threads: int = 1, *, block: int = CSR_BLOCK_ROWS, combine_dtype=np.float64,
                 residual_dtype=None):
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.d, self.threads, self.block = int(d), int(threads), int(block)
        self.combine_dtype = np.dtype(combine_dtype)
        self.partials = np.empty((self.threads - 1, self.d), dtype=np.float64)
        self.scalars = np.empty((self.threads, 3), dtype=np.float64)
        self.w_cast = np.empty(self.d, dtype=self.combine_dtype)
        self.residual_dtype = np.dtype(residual_dtype or combine_dtype)
        self.z, self.rbuf, self.lbuf = _aligned_blocks(self.threads, self.block,
                                                       (np.float64, self.residual_dtype, self.residual_dtype))

    def fits(self, d: int, threads: int, block: int, combine_dtype, residual_dtype=None) -> bool:
        """Whether this workspace serves such a call."""
        return ((self.d, self.threads, self.block, self.combine_dtype, self.residual_dtype)
                == (d, threads, block, np.dtype(combine_dtype), np.dtype(residual_dtype or combine_dtype)))

    def weights(self, w):
        """``w`` in the product dtype: ``w`` itself, or its copy in :attr:`w_cast` (O(d), no allocation)."""
        if w.dtype == self.combine_dtype:
            return w
        self.w_cast[...] = w
        return self.w_cast


def dense_chunk_bounds(n: int, chunks: int) -> np.ndarray:
    """Row boundaries (``chunks + 1`` values): contiguous row ranges of about ``n / chunks`` rows, the inner
    boundaries rounded down to multiples of 8.  With blocks of multiples of 8 rows as well
    (:func:`dense_block_rows`), the groups of rows combined in the data dtype are the same for any thread
    count, and results differ between thread counts only by the order of float64 sums."""
    return np.array([n * t // chunks // 8 * 8 for t in range(chunks)] + [n], dtype=np.int64)


def csr_chunk_bounds(indptr, chunks: int) -> np.ndarray:
    """Row boundaries of ``chunks`` contiguous row ranges with balanced non-zeros (a pure function of
    ``indptr``): chunk ``t`` ends at the first row whose ``indptr`` reaches ``nnz (t + 1) / chunks``."""
    indptr = np.asarray(indptr)
    n = indptr.shape[0] - 1
    first, nnz = int(indptr[0]), int(indptr[-1] - indptr[0])
    targets = [first + (nnz * t + chunks - 1) // chunks for t in range(1, chunks)]
    inner = np.searchsorted(indptr, targets, side="left").clip(0, n) if chunks > 1 else []
    bounds = np.concatenate(([0], inner, [n])).astype(np.int64)
    return np.maximum.accumulate(bounds)


def run_chunks(job, bounds) -> None:
    """Run ``job(lo, hi, t)`` for every chunk ``t`` of the row boundaries ``bounds``: chunk 0 on this thread,
    the others on the process-wide pool (the compiled kernels release the GIL), and wait for all of them."""
    chunks = len(bounds) - 1
    if chunks == 1:
        job(bounds[0], bounds[1], 0)
        return
    futures = [_executor(chunks - 1).submit(job, bounds[t], bounds[t + 1], t) for t in range(1, chunks)]
    job(bounds[0], bounds[1], 0)
    for future in futures:
        future.result()


def _run_chunks(call, bounds, out_grad, workspace) -> tuple[float, float, float]:
    """Run ``call(lo, hi, grad, t)`` for every chunk ``t`` (:func:`run_chunks`; chunk 0 into ``out_grad``, the
    others into ``workspace.partials``), then add the partials and scalars in chunk order."""
    chunks = len(bounds) - 1
    scalars = workspace.scalars

    def job(lo, hi, t):
        scalars[t] = call(lo, hi, out_grad if t == 0 else workspace.partials[t - 1], t)

    run_chunks(job, bounds)
    for t in range(chunks - 1):
        np.add(out_grad, workspace.partials[t], out=out_grad)
    loss_sum = intercept_sum = weight_sum = 0.0
    for t in range(chunks):
        loss_sum += scalars[t, 0]
        intercept_sum += scalars[t, 1]
        weight_sum += scalars[t, 2]
    return loss_sum, intercept_sum, weight_sum


def _loss_code(loss: str) -> int:
    try:
        return LOSS_CODES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; choose from {sorted(LOSS_CODES)}") from None


def _check_vectors(n: int, d: int, dtype, y, w, sample_weight, out_grad) -> None:
    if y.shape != (n,) or y.dtype != dtype:
        raise ValueError(f"y must have shape ({n},) and dtype {dtype}, got {y.shape} {y.dtype}")
    if sample_weight is not None and (sample_weight.shape != (n,) or sample_weight.dtype != dtype):
        raise ValueError(f"sample_weight must have shape ({n},) and dtype {dtype}")
    if w.shape != (d,) or w.dtype not in (np.float32, np.float64):
        raise ValueError(f"w must be a float vector of shape ({d},), got {w.shape} {w.dtype}")
    if out_grad.shape != (d,) or out_grad.dtype != np.float64 or not out_grad.flags.c_contiguous:
        raise ValueError(f"out_grad must be a contiguous float64 vector of shape ({d},)")


def _prepare(d: int, threads: int, block: int, combine_dtype, out_grad, workspace, residual_dtype=None):
    out_grad = np.empty(d, dtype=np.float64) if out_grad is None else out_grad
    if workspace is None or not workspace.fits(d, threads, block, combine_dtype, residual_dtype):
        workspace = Workspace(d, threads, block=block, combine_dtype=combine_dtype, residual_dtype=residual_dtype)
    return out_grad, workspace


def _combine_dtype(precision: str, dtype):
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    return np.dtype(dtype) if precision == "data" else np.dtype(np.float64)


def dense_loss_grad(X, y, w, b: float, loss: str, *, sample_weight=None, out_grad=None, threads: int = 1,
                    precision: str = "float64", workspace: Workspace | None = None, bounds=None):
    """Local sums of the loss and gradient over the rows of a dense ``X``, in one read of ``X``.

    Parameters
    ----------
    X : ndarray, (n, d)
        C-contiguous float32 or float64 (read as it is); ``n`` may be 0.
    y : ndarray, (n,)
        Targets (logistic: labels in {0, 1}), dtype of ``X``; ignored by ``gram``.
    w : ndarray, (d,)
        Weights (float64 from the optimizer, or float32); cast to the product dtype when it differs.
    b : float
        Intercept (pass 0.0 without one).
    loss : {"squared", "logistic", "gram"}
    sample_weight : ndarray, (n,), optional
        Non-negative row weights, dtype of ``X``.
    out_grad : ndarray, (d,), float64, optional
        Receives ``sum_i s_i r_i x_i`` (overwritten); allocated when omitted.
    threads : int
        Chunks of rows, each on its own thread (1: this thread only).
    precision : {"float64", "data"}
        Dtype of the products inside a row (:data:`PRECISIONS`); sums over rows are float64 either way.
    workspace : Workspace, optional
        Buffers; pass one (allocated once, or returned by :func:`dense_workspace`) to make calls
        allocation-free.
    bounds : ndarray, optional
        Chunk boundaries (:func:`dense_chunk_bounds`); computed when omitted.

    Returns
    -------
    (float, ndarray, float, float)
        ``sum_i s_i loss_i``, ``out_grad``, ``sum_i s_i r_i`` (intercept component), ``sum_i s_i``.
    """
    if X.ndim != 2 or X.dtype not in (np.float32, np.float64) or not X.flags.c_contiguous:
        raise ValueError(f"X must be a C-contiguous 2-D float32/float64 array, got {X.shape} {X.dtype}")
    n, d = X.shape
    combine = _combine_dtype(precision, X.dtype)
    out_grad, workspace = _prepare(d, threads, dense_block_rows(d, X.itemsize), combine, out_grad, workspace)
    _check_vectors(n, d, X.dtype, y, w, sample_weight, out_grad)
    code, b, w = _loss_code(loss), float(b), workspace.weights(w)
    bounds = dense_chunk_bounds(n, workspace.threads) if bounds is None else bounds
    z, rbuf, lbuf = workspace.z, workspace.rbuf, workspace.lbuf
    rows = _dense_rows_long if long_rows(d, X.itemsize) else _dense_rows
    loss_sum, intercept_sum, weight_sum = _run_chunks(
        lambda lo, hi, grad, t: rows(X, y, sample_weight, w, b, code, lo, hi, grad, z[t], rbuf[t], lbuf[t]),
        bounds, out_grad, workspace)
    return loss_sum, out_grad, intercept_sum, weight_sum


def dense_workspace(X, threads: int = 1, precision: str = "float64") -> Workspace:
    """The :class:`Workspace` :func:`dense_loss_grad` needs for ``X`` (make it once per slab)."""
    d = X.shape[1]
    return Workspace(d, threads, block=dense_block_rows(d, X.itemsize),
                     combine_dtype=_combine_dtype(precision, X.dtype))


def csr_workspace(d: int, data_dtype, threads: int = 1, precision: str = "float64") -> Workspace:
    """The :class:`Workspace` :func:`csr_loss_grad` needs for ``d`` features (make it once per slab)."""
    return Workspace(d, threads, block=CSR_BLOCK_ROWS, combine_dtype=_combine_dtype(precision, data_dtype),
                     residual_dtype=np.float64)


def csr_loss_grad(data, indices, indptr, y, w, b: float, loss: str, *, sample_weight=None, out_grad=None,
                  threads: int = 1, precision: str = "float64", workspace: Workspace | None = None, bounds=None):
    """Local sums of the loss and gradient over the rows of a CSR matrix, in one pass over its non-zeros.

    Parameters
    ----------
    data, indices, indptr : ndarray
        CSR arrays: ``data`` float32 or float64, ``indices`` int32 or int64 (in ``0 .. len(w) - 1``,
        unchecked here: validate when loading), ``indptr`` int32 or int64 of length ``n + 1`` (it may start
        above 0, as a rank's slice of a larger ``indptr`` does).
    y, w, b, loss, sample_weight, out_grad, threads, precision, workspace
        As in :func:`dense_loss_grad`; ``d = len(w)``.
    bounds : ndarray, optional
        Chunk boundaries (:func:`csr_chunk_bounds`); computed when omitted.

    Returns
    -------
    (float, ndarray, float, float)
        As :func:`dense_loss_grad`.
    """
    if data.dtype not in (np.float32, np.float64) or indices.dtype not in (np.int32, np.int64):
        raise ValueError(f"CSR data must be float32/float64 and indices int32/int64, got {data.dtype}, "
                         f"{indices.dtype}")
    if indptr.ndim != 1 or indptr.shape[0] < 1 or indptr.dtype not in (np.int32, np.int64):
        raise ValueError("indptr must be a non-empty int32/int64 vector")
    n, d = indptr.shape[0] - 1, w.shape[0]
    combine = _combine_dtype(precision, data.dtype)
    out_grad, workspace = _prepare(d, threads, CSR_BLOCK_ROWS, combine, out_grad, workspace, np.float64)
    _check_vectors(n, d, data.dtype, y, w, sample_weight, out_grad)
    code, b, w = _loss_code(loss), float(b), workspace.weights(w)
    bounds = csr_chunk_bounds(indptr, workspace.threads) if bounds is None else bounds
    unsigned = indices.view(np.uint32 if indices.dtype == np.int32 else np.uint64)
    z, rbuf, lbuf = workspace.z, workspace.rbuf, workspace.lbuf
    loss_sum, intercept_sum, weight_sum = _run_chunks(
        lambda lo, hi, grad, t: _csr_rows(data, unsigned, indptr, y, sample_weight, w, b, code, lo, hi, grad,
                                          z[t], rbuf[t], lbuf[t]),
        bounds, out_grad, workspace)
    return loss_sum, out_grad, intercept_sum, weight_sum


class FusedCPUGradient:
    """One rank's slab bound to the compiled kernel, with the call convention of the GPU's fused kernel
    (:class:`pgd.device.kernels.FusedGradient`), so the local gradient can hold either.

    Buffers (the per-thread partial gradients) and chunk boundaries are made once here; a call allocates
    nothing of size ``n`` or ``d``.

    Parameters
    ----------
    X : ndarray (n, d) C-contiguous, or a tuple ``(data, indices, indptr, d)`` for CSR
        The rank's rows, float32 or float64.
    y : ndarray, (n,)
        Targets in the data dtype.
    fit_intercept : bool
        Whether ``params[d]`` is added to every score and ``out[d]`` receives the residual sum.
    sample_weight : ndarray, (n,), optional
        Row weights in the data dtype.
    threads : int
        Threads (row chunks) per call; take it from ``PGD_BLAS_THREADS`` / the affinity as for BLAS.

    Attributes
    ----------
    kernel : str
        What runs, for the run summary (e.g. ``"fused one-pass CPU kernel (numba, 2 threads)"``).
    weight_sum : float
        ``sum_i s_i`` over all rows (``n`` without weights), from the last call over all rows.
    """

    def __init__(self, X, y, *, fit_intercept: bool, sample_weight=None, threads: int = 1,
                 precision: str = "float64"):
        self.sparse = isinstance(X, tuple)
        if self.sparse:
            data, indices, indptr, d = X
            self.X, self.n, self.d = (data, indices, indptr), indptr.shape[0] - 1, int(d)
        else:
            self.X, (self.n, self.d) = X, X.shape
        self.y, self.sample_weight = y, sample_weight
        self.fit_intercept = bool(fit_intercept)
        self.threads = max(1, int(threads))
        self.precision = precision
        if self.sparse:
            self.workspace = csr_workspace(self.d, self.X[0].dtype, self.threads, precision)
        else:
            self.workspace = dense_workspace(self.X, self.threads, precision)
        self._all_bounds = self._bounds(0, self.n)
        self.weight_sum = float("nan")
        form = "CSR" if self.sparse else "dense"
        plural = "s" if self.threads > 1 else ""
        self.kernel = f"fused one-pass CPU kernel (numba, {form}, {self.threads} thread{plural})"

    def _bounds(self, start: int, stop: int):
        if self.sparse:
            return start + csr_chunk_bounds(self.X[2][start:stop + 1], self.threads)
        return start + dense_chunk_bounds(stop - start, self.threads)

    def __call__(self, params, loss: str, out, rows: slice | None = None) -> None:
        """Overwrite ``out`` (float64, ``d + 2``: gradient sum, residual sum or 0, loss sum) with the sums
        over ``rows`` (all rows by default) at ``params = [w, b]`` (float64, length ``d + 1``)."""
        d = self.d
        start, stop = (0, self.n) if rows is None else rows.indices(self.n)[:2]
        stop = max(start, stop)
        bounds = self._all_bounds if (start, stop) == (0, self.n) else self._bounds(start, stop)
        w, b = params[:d], float(params[d]) if self.fit_intercept else 0.0
        common = dict(sample_weight=self.sample_weight, out_grad=out[:d], threads=self.threads,
                      precision=self.precision, workspace=self.workspace, bounds=bounds)
        if self.sparse:
            data, indices, indptr = self.X
            loss_sum, _, intercept_sum, weight_sum = csr_loss_grad(data, indices, indptr, self.y, w, b, loss,
                                                                   **common)
        else:
            loss_sum, _, intercept_sum, weight_sum = dense_loss_grad(self.X, self.y, w, b, loss, **common)
        out[d] = intercept_sum if self.fit_intercept else 0.0
        out[d + 1] = loss_sum
        if rows is None:
            self.weight_sum = weight_sum
