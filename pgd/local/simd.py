"""Explicit eight-lane vectors for the dense kernel's float32 rows (and its long float64 rows): numba
intrinsics that emit LLVM vector code for eight rows at a time.

Why: given the row loops of :mod:`pgd.local.cpu_kernels`, LLVM's loop vectoriser vectorises along a row.
For short rows that leaves little to vectorise (at d = 16 its four-lane remainder loop, then one horizontal
sum per row), and most of the time goes to loop control and reductions.  Here a row is loaded as
``<8 x float>`` vectors and eight rows share the work that does not scale with the row: the eight dot
products are summed across lanes together (a tree of shuffles, three levels for eight rows), and the eight
rows of the gradient pass are combined in registers before one float64 addition into the gradient.
In cache, float32 d = 16, one thread: scores 2.5 -> 1.5 ns per row, gradient pass 2.9 -> 1.8 ns
(docs/cpu_kernels.md).

The columns past the last multiple of eight are read with masked loads (``llvm.masked.load``; nothing is
read in a masked-off lane, so the last row of an array is safe) and written with masked stores.  The
products and the sums across eight rows are float32 (as the loops they replace, ``precision="data"``);
the gradient is float64.  The vectors are legal on every target LLVM supports (two SSE or NEON registers
where AVX is missing), so nothing here depends on the processor.

The one-sweep pair of long rows (:func:`eight_scores_eight_added`) also takes float64 rows with float64
``w`` and weights, in eight float64 lanes: what it brings there is the prefetch ahead in each streamed row
(float64 d = 1000, one thread, against the GEMV: 1.04-1.16x with the loops, 0.94-1.02x with the vectors).

Without numba every name here is None (the kernels are not used then).
"""

from __future__ import annotations

try:  # numba is optional: without it the kernels are not used
    import numba
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - the kernels are not used without numba
    numba = None

__all__ = ["LANES", "PREFETCH_AHEAD_BYTES", "eight_scores", "eight_rows_added", "eight_scores_eight_added",
           "prefetch_line"]

#: Lanes of a vector: float32 elements in 32 bytes (one AVX register); float64 ones (the long-row sweep) in 64.
LANES = 8
#: How far ahead in its row :func:`eight_scores_eight_added` prefetches the rows it reads from memory (four
#: cache lines).  One thread, float32 d = 1000, against the GEMV, A/B runs: 1.11-1.19x without, 1.01-1.08x
#: with 256 bytes; 64 bytes 1.12-1.15x, 128 bytes 1.05-1.10x, 192 bytes 1.02-1.14x, 384 bytes 1.01-1.12x,
#: 1 KiB 1.26-1.32x, 2 KiB 1.43x; into L2 only (locality 2) 1.08-1.15x; once per cache line instead of
#: once per chunk of eight floats 1.04-1.14x (docs/cpu_kernels.md).
PREFETCH_AHEAD_BYTES = 256

if numba is None:  # pragma: no cover - the kernels are not used without numba
    eight_scores = eight_rows_added = eight_scores_eight_added = prefetch_line = None
else:
    _types = numba.types
    _int1, _int32 = ir.IntType(1), ir.IntType(32)
    _floats, _doubles = ir.VectorType(ir.FloatType(), LANES), ir.VectorType(ir.DoubleType(), LANES)
    _masks = ir.VectorType(_int1, LANES)

    def _lane_constant(values):
        return ir.Constant(ir.VectorType(_int32, len(values)), list(values))

    def _splat(builder, value, vector_type):
        single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, _int32(0))
        return builder.shuffle_vector(single, single, _lane_constant([0] * vector_type.count))

    def _llvm_function(builder, name, result, arguments):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, arguments), name)

    def prefetch_line(builder, pointer):
        """Code for a software prefetch of the cache line holding ``pointer`` (LLVM's ``llvm.prefetch``:
        read, keep in all cache levels).  A prefetch never faults and retires at once."""
        byte_pointer = ir.IntType(8).as_pointer()
        function = _llvm_function(builder, "llvm.prefetch.p0i8", ir.VoidType(),
                                  [byte_pointer, _int32, _int32, _int32])
        builder.call(function, [builder.bitcast(pointer, byte_pointer), _int32(0), _int32(3), _int32(1)])

    def _suffix(vector_type):
        """LLVM's name of an eight-lane vector type in intrinsic names."""
        return "v8f32" if vector_type == _floats else "v8f64"

    def _widened(builder, value):
        """``value`` as eight float64 lanes."""
        return builder.fpext(value, _doubles) if value.type == _floats else value

    def _fma(builder, a, b, c):
        """``a * b + c`` in one rounding, lane by lane."""
        function = _llvm_function(builder, f"llvm.fma.{_suffix(a.type)}", a.type, [a.type] * 3)
        return builder.call(function, [a, b, c])

    def _load(builder, pointer, vector_type):
        return builder.load(builder.bitcast(pointer, vector_type.as_pointer()), align=4)

    def _masked_load(builder, pointer, vector_type, mask):
        """Lanes of ``mask`` from ``pointer``, zero elsewhere (masked-off lanes read no memory)."""
        suffix = _suffix(vector_type)
        loader = _llvm_function(builder, f"llvm.masked.load.{suffix}.p0{suffix}", vector_type,
                                [vector_type.as_pointer(), _int32, _masks, vector_type])
        return builder.call(loader, [builder.bitcast(pointer, vector_type.as_pointer()), _int32(4), mask,
                                     ir.Constant(vector_type, [0.0] * LANES)])

    def _masked_store(builder, value, pointer, mask):
        storer = _llvm_function(builder, "llvm.masked.store.v8f64.p0v8f64", ir.VoidType(),
                                [_doubles, _doubles.as_pointer(), _int32, _masks])
        builder.call(storer, [value, builder.bitcast(pointer, _doubles.as_pointer()), _int32(8), mask])

    def _columns(context, builder, X):
        """``(d, full, rest, mask)``: row length, full chunks of eight columns, columns after them, and the
        lanes those fill."""
        intp = context.get_value_type(_types.intp)
        d = builder.extract_value(X.shape, 1)
        rest = builder.urem(d, intp(LANES))
        filled = _splat(builder, builder.trunc(rest, _int32), ir.VectorType(_int32, LANES))
        mask = builder.icmp_unsigned("<", _lane_constant(range(LANES)), filled)
        return d, builder.udiv(d, intp(LANES)), rest, mask

    def _row_pointers(context, builder, X, d, first):
        intp = context.get_value_type(_types.intp)
        base = builder.gep(X.data, [builder.mul(first, d)])
        return [builder.gep(base, [builder.mul(intp(i), d)]) for i in range(LANES)]

    def _chunks(context, builder, full, rest, body):
        """``body(j, masked)`` for every full chunk of columns ``j ... j + 7`` (``masked`` None) and, if any
        columns remain, for their chunk (``masked`` True)."""
        intp = context.get_value_type(_types.intp)
        with cgutils.for_range(builder, full) as loop:
            body(builder.mul(loop.index, intp(LANES)), None)
        with builder.if_then(builder.icmp_unsigned("!=", rest, intp(0)), likely=False):
            body(builder.mul(full, intp(LANES)), True)

    def _transpose_sum(builder, vectors):
        """``<8 x float>`` whose lane ``i`` is the sum of ``vectors[i]``'s lanes: three levels of shuffles and
        additions (each level halves the lanes each row keeps and doubles the rows a vector holds)."""
        def level(a, b, low, high):
            return builder.fadd(builder.shuffle_vector(a, b, _lane_constant(low)),
                                builder.shuffle_vector(a, b, _lane_constant(high)))
        v = vectors
        # Level 1: rows (0, 2), (1, 3), (4, 6), (5, 7): lanes j + (j + 4) -> 4 lanes per row.
        halves = [level(v[a], v[b], [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
                  for a, b in ((0, 2), (1, 3), (4, 6), (5, 7))]
        # Level 2: 2 lanes per row, rows in the order 0 1 2 3 | 4 5 6 7 after level 3.
        quarters = [level(halves[a], halves[b], [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])
                    for a, b in ((0, 1), (2, 3))]
        # Level 3: one lane per row.
        return level(quarters[0], quarters[1], [0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15])

    def _contiguous(a, ndim, dtypes):
        """Whether the numba type ``a`` is a C-contiguous array of ``ndim`` dimensions and one of ``dtypes``."""
        return isinstance(a, _types.Array) and a.ndim == ndim and a.layout == "C" and a.dtype in dtypes

    def _float32_rows(X):
        return _contiguous(X, 2, (_types.float32,))

    def _float_rows(X):
        return _contiguous(X, 2, (_types.float32, _types.float64))

    def _vector_of(a, dtype):
        return _contiguous(a, 1, (dtype,))

    def _float32_vector(a):
        return _vector_of(a, _types.float32)

    def _float64_vector(a):
        return _vector_of(a, _types.float64)

    def _lanes_of(dtype):
        """The eight-lane vector type of ``dtype`` (a numba type)."""
        return _floats if dtype == _types.float32 else _doubles

    def _integers(*values):
        return all(isinstance(value, _types.Integer) for value in values)

    def _reader(builder, mask, masked, vector_type=_floats):
        """Loads of eight lanes: plain, or (``masked``) only ``mask``'s lanes, zero elsewhere."""
        if masked:
            return lambda pointer: _masked_load(builder, pointer, vector_type, mask)
        return lambda pointer: _load(builder, pointer, vector_type)

    def _scores_part(builder, rows, w_, vector_type=_floats):
        """``(step, finish)`` for the eight rows starting at the pointers ``rows``: ``step(j, read)`` adds
        columns ``j ... j + 7`` of their products with ``w`` into eight vectors of sums; ``finish(z_, k, bias)``
        sums each across its lanes and stores ``z[k + i] = sum_i + bias`` in float64."""
        sums = [cgutils.alloca_once_value(builder, ir.Constant(vector_type, [0.0] * LANES)) for _ in rows]

        def step(j, read):
            weights = read(builder.gep(w_.data, [j]))
            for row, total in zip(rows, sums):
                builder.store(_fma(builder, read(builder.gep(row, [j])), weights, builder.load(total)), total)

        def finish(z_, k, bias):
            scores = _widened(builder, _transpose_sum(builder, [builder.load(total) for total in sums]))
            scores = builder.fadd(scores, _splat(builder, bias, _doubles))
            builder.store(scores, builder.bitcast(builder.gep(z_.data, [k]), _doubles.as_pointer()), align=8)

        return step, finish

    def _added_part(context, builder, X_, d, first, r_, k, g_, mask, vector_type=_floats):
        """``step(j, read, masked)``: columns ``j ... j + 7`` of ``sum_i r[k + i] x_(first + i)`` over eight
        rows, combined in the rows' dtype (two chains of four rows, then their sum: half the latency of one
        chain), added to the float64 ``grad``."""
        intp = context.get_value_type(_types.intp)
        rows = _row_pointers(context, builder, X_, d, first)
        weights = [_splat(builder, builder.load(builder.gep(r_.data, [builder.add(k, intp(i))])), vector_type)
                   for i in range(LANES)]

        def step(j, read, masked):
            x = [read(builder.gep(row, [j])) for row in rows]
            low, high = builder.fmul(x[0], weights[0]), builder.fmul(x[4], weights[4])
            for i in (1, 2, 3):
                low = _fma(builder, x[i], weights[i], low)
                high = _fma(builder, x[i + 4], weights[i + 4], high)
            # Flags of its own: numba's fastmath pass flags only instructions without any, and with
            # "reassoc" LLVM folds this sum into the chains, leaving one chain of eight (twice the latency).
            added = _widened(builder, builder.fadd(low, high, flags=("contract",)))
            target = builder.gep(g_.data, [j])
            if masked:
                _masked_store(builder, builder.fadd(_masked_load(builder, target, _doubles, mask), added), target,
                             mask)
            else:
                pointer = builder.bitcast(target, _doubles.as_pointer())
                builder.store(builder.fadd(builder.load(pointer, align=8), added), pointer, align=8)

        return step

    def _arrays(context, builder, signature, args, *positions):
        return [context.make_array(signature.args[i])(context, builder, args[i]) for i in positions]

    def _indices(context, builder, signature, args, *positions):
        return [context.cast(builder, args[i], signature.args[i], _types.intp) for i in positions]

    @intrinsic
    def eight_scores(typingctx, X, first, w, z, k, b):
        """``z[k + i] = x_(first + i) . w + b`` for ``i < 8``: float32 rows and ``w``, float32 products and
        sums (each row's lanes summed across by :func:`_transpose_sum`), float64 ``z``."""
        if not (_float32_rows(X) and _float32_vector(w) and _float64_vector(z) and isinstance(b, _types.Float)
                and _integers(first, k)):
            return None

        def codegen(context, builder, signature, args):
            X_, w_, z_ = _arrays(context, builder, signature, args, 0, 2, 3)
            first_, k_ = _indices(context, builder, signature, args, 1, 4)
            d, full, rest, mask = _columns(context, builder, X_)
            step, finish = _scores_part(builder, _row_pointers(context, builder, X_, d, first_), w_)
            _chunks(context, builder, full, rest, lambda j, masked: step(j, _reader(builder, mask, masked)))
            finish(z_, k_, context.cast(builder, args[5], signature.args[5], _types.float64))
            return context.get_dummy_value()

        return _types.void(X, first, w, z, k, b), codegen

    @intrinsic
    def eight_rows_added(typingctx, X, first, r, k, grad):
        """``grad += sum_i r[k + i] x_(first + i)`` for ``i < 8``: float32 rows and ``r``, the eight rows
        combined in float32, then added to the float64 ``grad``."""
        if not (_float32_rows(X) and _float32_vector(r) and _float64_vector(grad) and _integers(first, k)):
            return None

        def codegen(context, builder, signature, args):
            X_, r_, g_ = _arrays(context, builder, signature, args, 0, 2, 4)
            first_, k_ = _indices(context, builder, signature, args, 1, 3)
            d, full, rest, mask = _columns(context, builder, X_)
            step = _added_part(context, builder, X_, d, first_, r_, k_, g_, mask)
            _chunks(context, builder, full, rest, lambda j, masked: step(j, _reader(builder, mask, masked), masked))
            return context.get_dummy_value()

        return _types.void(X, first, r, k, grad), codegen

    @intrinsic
    def eight_scores_eight_added(typingctx, X, ahead, w, z, k, b, start, r, grad):
        """:func:`eight_scores` of rows ``ahead ...`` (into ``z[k ...]``) and :func:`eight_rows_added` of
        rows ``start ...`` (weights ``r[k ...]``) in one sweep over the columns: sixteen rows read at once,
        the first eight from memory (each prefetched :data:`PREFETCH_AHEAD_BYTES` ahead) while the second
        eight come back from cache.  Float32 or float64 rows, ``w`` and ``r`` of their dtype (eight float64
        lanes are 64 bytes: two AVX registers, or one AVX-512)."""
        if not (_float_rows(X) and _vector_of(w, X.dtype) and _float64_vector(z) and isinstance(b, _types.Float)
                and _vector_of(r, X.dtype) and _float64_vector(grad) and _integers(ahead, k, start)):
            return None
        lanes = _lanes_of(X.dtype)

        def codegen(context, builder, signature, args):
            X_, w_, z_, r_, g_ = _arrays(context, builder, signature, args, 0, 2, 3, 7, 8)
            ahead_, k_, start_ = _indices(context, builder, signature, args, 1, 4, 6)
            d, full, rest, mask = _columns(context, builder, X_)
            streamed = _row_pointers(context, builder, X_, d, ahead_)
            scores_step, finish = _scores_part(builder, streamed, w_, lanes)
            added_step = _added_part(context, builder, X_, d, start_, r_, k_, g_, mask, lanes)
            ahead_elements = context.get_value_type(_types.intp)(PREFETCH_AHEAD_BYTES * 8 // X.dtype.bitwidth)

            def body(j, masked):
                read = _reader(builder, mask, masked, lanes)
                if not masked:
                    for row in streamed:
                        prefetch_line(builder, builder.gep(row, [builder.add(j, ahead_elements)]))
                scores_step(j, read)
                added_step(j, read, masked)

            _chunks(context, builder, full, rest, body)
            finish(z_, k_, context.cast(builder, args[5], signature.args[5], _types.float64))
            return context.get_dummy_value()

        return _types.void(X, ahead, w, z, k, b, start, r, grad), codegen
