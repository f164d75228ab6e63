"""One-pass fused gradient kernel for the GPU: ``z = X w + b``, loss, ``r = loss'(z)`` and ``X^T r`` in
a single read of ``X`` (CuPy ``RawModule``), and the one-block kernel that finishes a data-parallel
evaluation (normalisation, L2 penalty, loss and gradient norm) after the Allreduce.

Algorithm of the vectorised path (16-byte loads; ``VEC = 16 / sizeof(T)`` columns per load):

- A block has :data:`WARPS_PER_BLOCK` warps. A warp is split into ``32 / LANES`` *groups* of ``LANES``
  lanes; each group works on one row (``LANES`` is the power of two just above the row's vector count, so
  narrow rows such as d = 16 float32 put eight rows in one warp instead of leaving 28 lanes idle).
- Per iteration a warp loads ``STEP = (32 / LANES) * UNROLL`` rows, all issued before any is used, so that
  several rows per warp are in flight (memory-level parallelism is what a bandwidth-bound kernel needs).
  Warp ``g`` (global index) takes the row blocks ``g, g + W, g + 2W, ...`` of ``STEP`` rows, ``W`` warps.
- Lane ``s`` of a group owns the vectors ``v = s + LANES * c`` for ``c < CHUNKS`` (columns ``v*VEC ..
  v*VEC + VEC - 1``).  The dot product is reduced with shuffles inside the group; residual and loss are
  computed once per row; each lane adds ``r * x`` to its register accumulators: ``X`` is read once.
- At the end the groups of a warp are summed with shuffles, the warps of a block in shared memory
  (float64), and the block adds its sums to ``out`` with one float64 atomic per column.

The generic path (any ``d``, any alignment) uses scalar loads: chunk ``c`` of lane ``l`` is column
``tile0 + l + 32 c`` of the column tile ``blockIdx.y`` (tiles of ``32 * CHUNKS`` columns; with more than one
tile each warp also reads the other columns of the row for the dot product, so ``X`` is read more than once).

Both paths read the weights and the intercept straight from the optimizer's float64 parameter vector
``[w, b]`` on the device (cast to ``T`` as the CPU path does), so a call needs no host synchronisation and
no copy of ``w``.  ``out`` follows :mod:`pgd.local.losses`: ``out[:d]`` the gradient sum, ``out[d]`` the residual
sum (0 without intercept), ``out[d + 1]`` the loss sum (or ``sum z^2`` for the Gram product); it is zeroed
with an asynchronous memset before the launch.  Accumulation order depends on the scheduling, so results
agree with the CPU up to rounding, not bit for bit.

``import cupy`` never happens here at import time: :class:`FusedGradient` receives the ``cupy`` module.
Each launch configuration is compiled on first use as a module of its own (one instantiation, cached by
CuPy on disk), so a run compiles only what it launches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WARP = 32
WARPS_PER_BLOCK = 8
#: Largest number of 16-byte vectors per lane (32 * 16 vectors = 2048 float32 or 1024 float64 columns).
MAX_VEC_CHUNKS = 16
#: Loads in flight per lane and iteration on the vectorised path: ``UNROLL * CHUNKS`` is at least this.
VECTORS_IN_FLIGHT = 4
#: Chunks per lane on the generic path; a column tile is 32 * this many columns.
GENERIC_CHUNKS = (1, 2, 4, 8, 16, 32)
#: A launch gives every warp at least this many iterations (fewer blocks, fewer atomics on small n).
MIN_ITERATIONS_PER_WARP = 4
#: The fused kernel is used while it reads ``X`` at most this often (column tiles of the generic path);
#: wider rows take the two-pass CuPy/cuBLAS path, which reads ``X`` twice.
MAX_READS_OF_X = 2
#: Loss codes compiled into the kernel (``gram`` is ``r = z``, scalar ``z^2``, for the power iteration).
LOSS_CODES = {"squared": 0, "logistic": 1, "gram": 2}
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

KERNEL_SOURCE = r"""
template <typename T> struct Vec;
template <> struct Vec<float>  { typedef float4  type; static constexpr int n = 4; };
template <> struct Vec<double> { typedef double2 type; static constexpr int n = 2; };

__device__ __forceinline__ float vget(const float4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
__device__ __forceinline__ double vget(const double2 &v, int i) { return i == 0 ? v.x : v.y; }

// One 16-byte vector of weights from the float64 parameter vector, cast to the data type.
__device__ __forceinline__ void load_weights(const double *p, float4 &v) {
    v = make_float4((float)p[0], (float)p[1], (float)p[2], (float)p[3]);
}
__device__ __forceinline__ void load_weights(const double *p, double2 &v) { v = make_double2(p[0], p[1]); }

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// Residual r = d loss / d z of one row, and the row's scalar term (loss, or z^2 for LOSS 2).
template <typename T, int LOSS>
__device__ __forceinline__ T residual(T z, T y, double &scalar) {
    if (LOSS == 0) {            // squared: (z - y)^2 / 2
        T r = z - y;
        scalar += 0.5 * (double)r * (double)r;
        return r;
    } else if (LOSS == 1) {     // logistic, labels in {0, 1}, never overflows
        T e = exp(-fabs(z));
        T one = (T)1;
        scalar += (double)(fmax(z, (T)0) - y * z) + (double)log1p(e);
        T sig = z >= (T)0 ? one / (one + e) : e / (one + e);
        return sig - y;
    } else {                    // Gram product: r = z, scalar z^2
        scalar += (double)z * (double)z;
        return z;
    }
}

// Block-level sum of the per-lane accumulators into out (one float64 atomic per column per block).
// shared has `width` doubles; col0 is the first column the block owns.
__device__ __forceinline__ void block_flush(double *shared, int width, double *out, long long col0,
                                            long long d) {
    __syncthreads();
    for (int j = threadIdx.x; j < width; j += blockDim.x)
        if (col0 + j < d && shared[j] != 0.0) atomicAdd(out + col0 + j, shared[j]);
}

// Vectorised path: d % VEC == 0, 16-byte aligned rows, d <= LANES * CHUNKS * VEC.
template <typename T, int LOSS, int LANES, int CHUNKS, int UNROLL>
__device__ void fused_vec(const T *__restrict__ X, const T *__restrict__ y,
                          const double *__restrict__ params, long long n, long long d, int fit_intercept,
                          double *__restrict__ out) {
    typedef typename Vec<T>::type V;
    constexpr int VN = Vec<T>::n;
    constexpr int GROUPS = 32 / LANES;        // rows a warp works on side by side
    constexpr int STEP = GROUPS * UNROLL;     // rows a warp loads per iteration, all in flight together
    extern __shared__ double shared[];
    const int lane = threadIdx.x & 31;
    const int group = lane / LANES, sub = lane % LANES;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long nvec = d / VN;
    const T offset = fit_intercept ? (T)params[d] : (T)0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) shared[j] = 0.0;
    V wv[CHUNKS];
    T acc[CHUNKS][VN];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const long long v = sub + (long long)LANES * c;
        if (v < nvec) load_weights(params + v * VN, wv[c]); else wv[c] = V{};
        #pragma unroll
        for (int k = 0; k < VN; ++k) acc[c][k] = (T)0;
    }
    double scalar = 0.0, rsum = 0.0;
    for (long long base = warp * STEP; base < n; base += warps * STEP) {
        V xv[UNROLL][CHUNKS];
        T yv[UNROLL];
        #pragma unroll
        for (int u = 0; u < UNROLL; ++u) {      // issue every load of the STEP rows first
            const long long row = base + group + (long long)GROUPS * u;
            const bool live = row < n;
            yv[u] = live ? y[row] : (T)0;
            const V *xr = reinterpret_cast<const V *>(X + (live ? row : 0LL) * d);
            #pragma unroll
            for (int c = 0; c < CHUNKS; ++c) {
                const long long v = sub + (long long)LANES * c;
                xv[u][c] = (live && v < nvec) ? __ldcs(xr + v) : V{};
            }
        }
        #pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            T dot = (T)0;
            #pragma unroll
            for (int c = 0; c < CHUNKS; ++c)
                #pragma unroll
                for (int k = 0; k < VN; ++k) dot += vget(xv[u][c], k) * vget(wv[c], k);
            #pragma unroll
            for (int width = LANES / 2; width > 0; width >>= 1)    // sum within the group
                dot += __shfl_xor_sync(0xffffffffu, dot, width);
            if (base + group + (long long)GROUPS * u < n) {
                double row_scalar = 0.0;
                const T r = residual<T, LOSS>(dot + offset, yv[u], row_scalar);
                if (sub == 0) { scalar += row_scalar; rsum += (double)r; }
                #pragma unroll
                for (int c = 0; c < CHUNKS; ++c)
                    #pragma unroll
                    for (int k = 0; k < VN; ++k) acc[c][k] += r * vget(xv[u][c], k);
            }
        }
    }
    #pragma unroll
    for (int width = LANES; width < 32; width <<= 1) {   // sum the groups (lanes with the same sub)
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c)
            #pragma unroll
            for (int k = 0; k < VN; ++k) acc[c][k] += __shfl_xor_sync(0xffffffffu, acc[c][k], width);
        scalar += __shfl_xor_sync(0xffffffffu, scalar, width);
        rsum += __shfl_xor_sync(0xffffffffu, rsum, width);
    }
    __syncthreads();
    if (group == 0) {
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            const long long v = sub + (long long)LANES * c;
            if (v < nvec)
                #pragma unroll
                for (int k = 0; k < VN; ++k) atomicAdd(shared + v * VN + k, (double)acc[c][k]);
        }
        if (sub == 0) {
            atomicAdd(out + d + 1, scalar);
            if (fit_intercept) atomicAdd(out + d, rsum);
        }
    }
    block_flush(shared, (int)d, out, 0, d);
}

// Generic path: any d; blockIdx.y is a tile of 32 * CHUNKS columns.
template <typename T, int LOSS, int CHUNKS>
__device__ void fused_generic(const T *__restrict__ X, const T *__restrict__ y,
                              const double *__restrict__ params, long long n, long long d, int fit_intercept,
                              double *__restrict__ out) {
    extern __shared__ double shared[];
    constexpr int TILE = 32 * CHUNKS;
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long tile0 = (long long)blockIdx.y * TILE;
    const bool whole_row = d <= TILE;
    const T offset = fit_intercept ? (T)params[d] : (T)0;
    for (int j = threadIdx.x; j < TILE; j += blockDim.x) shared[j] = 0.0;
    T wv[CHUNKS], acc[CHUNKS];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        long long col = tile0 + lane + 32LL * c;
        wv[c] = col < d ? (T)params[col] : (T)0;
        acc[c] = (T)0;
    }
    double scalar = 0.0, rsum = 0.0;
    for (long long row = warp; row < n; row += warps) {
        const T *xr = X + row * d;
        T xv[CHUNKS];
        T dot = (T)0;
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            long long col = tile0 + lane + 32LL * c;
            xv[c] = col < d ? xr[col] : (T)0;
            dot += xv[c] * wv[c];
        }
        if (!whole_row)   // the columns outside this block's tile, for the dot product only
            for (long long col = lane; col < d; col += 32)
                if (col < tile0 || col >= tile0 + TILE) dot += xr[col] * (T)params[col];
        T z = warp_sum(dot) + offset;
        double row_scalar = 0.0;
        T r = residual<T, LOSS>(z, y[row], row_scalar);
        if (lane == 0 && blockIdx.y == 0) { scalar += row_scalar; rsum += (double)r; }
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) acc[c] += r * xv[c];
    }
    __syncthreads();
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        long long col = tile0 + lane + 32LL * c;
        if (col < d) atomicAdd(shared + lane + 32 * c, (double)acc[c]);
    }
    if (lane == 0 && blockIdx.y == 0) {
        atomicAdd(out + d + 1, scalar);
        if (fit_intercept) atomicAdd(out + d, rsum);
    }
    block_flush(shared, TILE, out, tile0, d);
}

#define PGD_FUSED_VEC(NAME, T, LOSS, LANES, CHUNKS, UNROLL)                                            \
extern "C" __global__ void __launch_bounds__(256)                                                    \
NAME(const T *X, const T *y, const double *params, long long n, long long d, int fit_intercept,      \
     double *out) {                                                                                  \
    fused_vec<T, LOSS, LANES, CHUNKS, UNROLL>(X, y, params, n, d, fit_intercept, out);               \
}
#define PGD_FUSED_GEN(NAME, T, LOSS, CHUNKS)                                                           \
extern "C" __global__ void __launch_bounds__(256)                                                    \
NAME(const T *X, const T *y, const double *params, long long n, long long d, int fit_intercept,      \
     double *out) {                                                                                  \
    fused_generic<T, LOSS, CHUNKS>(X, y, params, n, d, fit_intercept, out);                          \
}
"""

#: Threads of the one-block finishing kernel.
FINISH_THREADS = 256

FINISH_SOURCE = r"""
// After the Allreduce: grad = sums[:d+1] / count (+ l2 * w on the first d entries),
// stats = [sums[d+1] / count + l2 / 2 * |w|^2, |grad|^2]. One block; the tree sum has a fixed order.
extern "C" __global__ void __launch_bounds__(256)
pgd_finish(const double *sums, const double *params, double *grad, double *stats, long long d,
           double count, double l2) {
    __shared__ double wsq[256], gsq[256];
    double w2 = 0.0, g2 = 0.0;
    for (long long j = threadIdx.x; j <= d; j += blockDim.x) {
        double g = sums[j] / count;
        if (j < d) {
            const double w = params[j];
            g += l2 * w;
            w2 += w * w;
        }
        grad[j] = g;
        g2 += g * g;
    }
    wsq[threadIdx.x] = w2;
    gsq[threadIdx.x] = g2;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            wsq[threadIdx.x] += wsq[threadIdx.x + half];
            gsq[threadIdx.x] += gsq[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        stats[0] = sums[d + 1] / count + 0.5 * l2 * wsq[0];
        stats[1] = gsq[0];
    }
}
"""

@dataclass(frozen=True)
class LaunchPlan:
    """How one call is launched: kernel variant, grid, block and shared memory.

    On the vectorised path a warp holds ``32 // lanes`` rows side by side and loads ``unroll`` of those
    row groups per iteration; on the generic path ``lanes`` is 32 and ``unroll`` 1.
    """

    vectorised: bool
    vec: int          # elements per 16-byte load on the vectorised path, 1 on the generic path
    lanes: int        # lanes per row
    chunks: int       # chunks per lane
    unroll: int       # row groups loaded per warp and iteration
    tiles: int        # column tiles (grid y); 1 on the vectorised path
    blocks: int       # grid x
    threads: int      # threads per block
    shared_bytes: int

    @property
    def tile_width(self) -> int:
        """Columns owned by one block (``d`` rounded up on the vectorised path)."""
        return self.lanes * self.chunks * self.vec

    @property
    def rows_per_step(self) -> int:
        """Rows one warp loads per iteration."""
        return WARP // self.lanes * self.unroll


def _pow2_at_least(value: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, value))))


def plan_launch(n: int, d: int, itemsize: int, *, aligned: bool, max_blocks: int) -> LaunchPlan:
    """Choose the kernel variant and grid for an ``(n, d)`` slab.

    Parameters
    ----------
    n, d : int
        Rows and columns.
    itemsize : int
        4 (float32) or 8 (float64).
    aligned : bool
        Whether ``X`` starts on a 16-byte boundary.
    max_blocks : int
        Most blocks worth launching (resident blocks on the device: SMs x blocks per SM).
    """
    vec = 16 // itemsize
    threads = WARP * WARPS_PER_BLOCK
    vectors = -(-d // vec)
    if aligned and d % vec == 0 and vectors <= WARP * MAX_VEC_CHUNKS:
        lanes = min(WARP, _pow2_at_least(vectors))
        chunks = _pow2_at_least(-(-vectors // WARP))
        unroll = max(1, VECTORS_IN_FLIGHT // chunks)
        vectorised, tiles, width = True, 1, d
    else:
        need = -(-d // WARP)
        chunks = next((c for c in GENERIC_CHUNKS if c >= need), GENERIC_CHUNKS[-1])
        vectorised, vec, lanes, unroll, tiles = False, 1, WARP, 1, -(-d // (WARP * chunks))
        width = WARP * chunks
    rows_per_block_iteration = WARP // lanes * unroll * WARPS_PER_BLOCK
    blocks = max(1, min(max_blocks, -(-n // (rows_per_block_iteration * MIN_ITERATIONS_PER_WARP))))
    return LaunchPlan(vectorised, vec, lanes, chunks, unroll, tiles, blocks, threads, 8 * width)


def resident_blocks(registers: int, shared_bytes: int) -> int:
    """Blocks of :data:`WARPS_PER_BLOCK` warps one SM holds at once (Hopper limits: 64 Ki registers,
    228 KiB shared memory, 2048 threads); 8 when the register count is unknown (0).

    A launch of ``SMs x`` this many blocks is one wave: every block loops over its rows, and the blocks'
    atomics at the end are as few as the device allows.
    """
    threads = WARP * WARPS_PER_BLOCK
    by_threads = 2048 // threads
    if registers <= 0:
        return by_threads
    per_warp = -(-registers * WARP // 256) * 256     # registers are allocated per warp in units of 256
    by_registers = 65536 // (per_warp * WARPS_PER_BLOCK)
    by_shared = (228 * 1024) // max(1, shared_bytes + 1024)   # 1 KiB reserved per block
    return max(1, min(by_threads, by_registers, by_shared))


def kernel_name(ctype: str, loss: str, plan: LaunchPlan) -> str:
    """The ``extern "C"`` name of one instantiation, e.g. ``pgd_fused_float_squared_vec_16x1x4``."""
    if plan.vectorised:
        return f"pgd_fused_{ctype}_{loss}_vec_{plan.lanes}x{plan.chunks}x{plan.unroll}"
    return f"pgd_fused_{ctype}_{loss}_gen_{plan.chunks}"


def instantiation(ctype: str, loss: str, plan: LaunchPlan) -> str:
    """The source line that instantiates the kernel ``kernel_name(ctype, loss, plan)``."""
    name = kernel_name(ctype, loss, plan)
    if plan.vectorised:
        return f"PGD_FUSED_VEC({name}, {ctype}, {LOSS_CODES[loss]}, {plan.lanes}, {plan.chunks}, {plan.unroll})"
    return f"PGD_FUSED_GEN({name}, {ctype}, {LOSS_CODES[loss]}, {plan.chunks})"


def all_plans():
    """One plan per distinct kernel variant (the grid fields are placeholders)."""
    shapes = [(True, lanes, 1) for lanes in (1, 2, 4, 8, 16, 32)]
    shapes += [(True, WARP, chunks) for chunks in (2, 4, 8, MAX_VEC_CHUNKS)]
    shapes += [(False, WARP, chunks) for chunks in GENERIC_CHUNKS]
    for vectorised, lanes, chunks in shapes:
        unroll = max(1, VECTORS_IN_FLIGHT // chunks) if vectorised else 1
        yield LaunchPlan(vectorised, 4 if vectorised else 1, lanes, chunks, unroll, 1, 1, WARP * WARPS_PER_BLOCK, 0)


def instantiations():
    """Every ``(name, source line)`` a run can compile: dtypes x losses x kernel variants."""
    for ctype in CTYPES.values():
        for loss in LOSS_CODES:
            for plan in all_plans():
                yield kernel_name(ctype, loss, plan), instantiation(ctype, loss, plan)


def module_source(lines=None) -> str:
    """Kernel source with the given instantiation lines (all of them by default), as nvcc/NVRTC compile it."""
    lines = [line for _, line in instantiations()] if lines is None else list(lines)
    return KERNEL_SOURCE + "\n".join(lines) + "\n"


def simulate_fused(X, y, w, offset: float, loss: str, fit_intercept: bool, plan: LaunchPlan) -> np.ndarray:
    """NumPy model of the kernel's work split (which warp, group, lane, chunk and tile touches which entry).

    Follows the kernel's index formulas literally and counts how often each ``X`` entry is added into the
    gradient, so tests can check that every entry is used exactly once under any :class:`LaunchPlan`.
    Returns ``out`` (``d + 2``, float64) like the kernel; raises ``AssertionError`` on a coverage error.
    """
    n, d = X.shape
    out = np.zeros(d + 2)
    used = np.zeros((n, d), dtype=np.int64)
    warps = plan.blocks * plan.threads // WARP
    groups, step = WARP // plan.lanes, plan.rows_per_step
    for tile in range(plan.tiles):
        tile0 = tile * WARP * plan.chunks
        for warp in range(warps):
            for base in range(warp * step, n, warps * step):
                for u in range(plan.unroll):
                    for group in range(groups):
                        row = base + group + groups * u
                        if row >= n:
                            continue
                        columns = []   # the columns this row's lanes add into the gradient for this tile
                        for sub in range(plan.lanes):
                            for c in range(plan.chunks):
                                if plan.vectorised:
                                    v = sub + plan.lanes * c
                                    columns += [v * plan.vec + k for k in range(plan.vec) if v < d // plan.vec]
                                elif tile0 + sub + WARP * c < d:
                                    columns.append(tile0 + sub + WARP * c)
                        z = float(X[row].astype(np.float64) @ w.astype(np.float64)) + offset
                        r, scalar = _residual(z, float(y[row]), loss)
                        for col in columns:
                            out[col] += r * X[row, col]
                            used[row, col] += 1
                        if tile == 0:
                            out[d + 1] += scalar
                            out[d] += r if fit_intercept else 0.0
    assert np.all(used == 1), "an X entry was used other than exactly once"
    return out


def _residual(z: float, y: float, loss: str) -> tuple[float, float]:
    if loss == "squared":
        return z - y, 0.5 * (z - y) ** 2
    if loss == "logistic":
        e = math.exp(-abs(z))
        sig = 1 / (1 + e) if z >= 0 else e / (1 + e)
        return sig - y, max(z, 0.0) - y * z + math.log1p(e)
    return z, z * z


class FusedGradient:
    """Launches the fused kernel on CuPy arrays (``X`` ``(n, d)`` C-contiguous, ``y`` ``(n,)``).

    Parameters
    ----------
    cupy : module
        The CuPy module (passed in, never imported here).
    X, y : cupy.ndarray
        The rank's slab on the device.
    fit_intercept : bool
        Whether ``out[d]`` receives the residual sum and ``params[d]`` is added to ``X w``.
    """

    _modules: dict = {}   # (cupy, device, instantiation line) -> compiled RawModule, shared by all instances

    def __init__(self, cupy, X, y, *, fit_intercept: bool):
        self.cupy, self.X, self.y = cupy, X, y
        self.fit_intercept = np.int32(bool(fit_intercept))
        self.n, self.d = X.shape
        self.dtype = np.dtype(X.dtype)
        self.sms = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
        self._launches = {}

    def plan(self, n: int | None = None, *, aligned: bool | None = None) -> LaunchPlan:
        """The kernel variant for ``n`` rows (all by default) of this slab, before occupancy is known;
        ``plan().tiles`` is how many times a pass reads ``X``."""
        aligned = self.X.data.ptr % 16 == 0 if aligned is None else aligned
        return plan_launch(self.n if n is None else n, self.d, self.dtype.itemsize, aligned=aligned,
                           max_blocks=self.sms * 8)

    def _kernel(self, loss: str, plan: LaunchPlan):
        """The compiled kernel for ``(dtype, loss, plan)``: one small module per variant, built on first use."""
        line = instantiation(CTYPES[self.dtype], loss, plan)
        key = (self.cupy, self.cupy.cuda.Device().id, line)
        if key not in self._modules:
            self._modules[key] = self.cupy.RawModule(code=module_source([line]), options=("--std=c++17",))
        return self._modules[key].get_function(kernel_name(CTYPES[self.dtype], loss, plan))

    def __call__(self, params, loss: str, out, rows: slice | None = None) -> None:
        """Overwrite ``out`` (float64, ``d + 2``) with the sums over ``rows`` (all rows by default) at the
        float64 parameter vector ``params = [w, b]`` (device, length ``d + 1``)."""
        if rows is None:
            X, y = self.X, self.y
        else:
            start, stop = rows.indices(self.n)[:2]
            X, y = self.X[start:stop], self.y[start:stop]
        n = X.shape[0]
        cuda = self.cupy.cuda
        cuda.runtime.memsetAsync(out.data.ptr, 0, out.nbytes, cuda.get_current_stream().ptr)
        if n == 0:
            return
        key = (n, X.data.ptr % 16 == 0, loss)
        if key not in self._launches:   # plan and kernel looked up once per shape (launch overhead)
            plan = self.plan(n, aligned=key[1])
            kernel = self._kernel(loss, plan)
            resident = self.sms * resident_blocks(getattr(kernel, "num_regs", 0), plan.shared_bytes)
            plan = plan_launch(n, self.d, self.dtype.itemsize, aligned=key[1], max_blocks=resident)
            self._launches[key] = (plan, kernel, np.int64(n), np.int64(self.d))
        plan, kernel, n64, d64 = self._launches[key]
        kernel((plan.blocks, plan.tiles), (plan.threads,), (X, y, params, n64, d64, self.fit_intercept, out),
               shared_mem=plan.shared_bytes)


#: Relative error above which the start-up check rejects the fused kernel (its float32 error is ~1e-6).
SELF_CHECK_TOLERANCE = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-9}


def simulate_finish(sums, params, grad_out, count: float, l2: float, threads: int = FINISH_THREADS):
    """NumPy model of ``pgd_finish`` (same strided partial sums and tree order); returns
    ``(loss, |grad|^2)`` and writes ``grad_out`` like :class:`FinishKernel`."""
    d = grad_out.shape[0] - 1
    grad_out[...] = sums[: d + 1] / count
    grad_out[:d] += l2 * params[:d]
    w_sq, g_sq = np.zeros(threads), np.zeros(threads)
    for thread in range(threads):
        w_sq[thread] = sum(float(w) * float(w) for w in params[thread:d:threads])
        g_sq[thread] = sum(float(g) * float(g) for g in grad_out[thread:d + 1:threads])
    half = threads // 2
    while half:
        w_sq[:half] += w_sq[half:2 * half]
        g_sq[:half] += g_sq[half:2 * half]
        half //= 2
    return float(sums[d + 1] / count + 0.5 * l2 * w_sq[0]), float(g_sq[0])


class FinishKernel:
    """Finishes a data-parallel evaluation on the device in one launch and one small copy to the host.

    After the Allreduce of the local sums, :meth:`__call__` writes the normalised, penalised gradient into
    ``grad_out`` and returns ``(loss, |grad|^2)``: the work of five CuPy operations and three host
    synchronisations of the step-by-step version, in one kernel and one synchronisation.
    """

    _modules: dict = {}

    def __init__(self, cupy, ops):
        self.cupy, self.ops = cupy, ops
        key = (cupy, cupy.cuda.Device().id)
        if key not in self._modules:
            self._modules[key] = cupy.RawModule(code=FINISH_SOURCE, options=("--std=c++17",))
        self._kernel = self._modules[key].get_function("pgd_finish")
        self._stats = cupy.empty(2, dtype=cupy.float64)
        self._host = ops.pinned_empty(2, np.float64)

    def __call__(self, sums, params, grad_out, count: float, l2: float) -> tuple[float, float]:
        """``grad_out[:] = sums[:d+1] / count`` (+ ``l2 * w``); returns the loss and ``|grad_out|^2``."""
        d = grad_out.shape[0] - 1
        self._kernel((1,), (FINISH_THREADS,), (sums, params, grad_out, self._stats, np.int64(d),
                                               np.float64(count), np.float64(l2)))
        self.ops.copy_to_host(self._stats, self._host)
        self.ops.synchronize()
        return float(self._host[0]), float(self._host[1])
