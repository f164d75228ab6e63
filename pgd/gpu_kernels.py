"""One-pass fused gradient kernel for the GPU: ``z = X w + b``, loss, ``r = loss'(z)`` and ``X^T r`` in
a single read of ``X`` (a CuPy ``RawModule``).

Algorithm (each warp streams whole rows):

- A block has :data:`WARPS_PER_BLOCK` warps; warp ``g`` (global index) takes rows ``g, g + W, g + 2W, ...``
  with ``W`` the number of warps in the grid.
- Lane ``l`` of a warp owns the columns of ``CHUNKS`` chunks: on the vectorised path chunk ``c`` is the
  16-byte vector ``v = l + 32 c`` (columns ``v*VEC .. v*VEC + VEC - 1``, ``VEC = 16 / sizeof(T)``); on the
  generic path chunk ``c`` is column ``tile0 + l + 32 c`` of the column tile ``blockIdx.y`` (tiles of
  ``32 * CHUNKS`` columns; with more than one tile each warp also reads the other columns of the row for the
  dot product).
- The dot product of a row is reduced with warp shuffles (every lane gets it), the residual and loss are
  computed once, and each lane adds ``r * x`` to its register accumulators: ``X`` is read once.
- At the end the warps of a block sum their accumulators in shared memory (float64) and the block adds its
  sums to ``out`` with one atomic per column (``out`` is zeroed first; float64 atomics).

``out`` follows :mod:`pgd.losses`: ``out[:d]`` the gradient sum, ``out[d]`` the residual sum (0 without
intercept), ``out[d + 1]`` the loss sum (or ``sum z^2`` for the Gram product). Accumulation order depends on
the scheduling, so results agree with the CPU up to rounding, not bit for bit.

``import cupy`` never happens here at import time: :class:`FusedGradient` receives the ``cupy`` module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WARP = 32
WARPS_PER_BLOCK = 8
#: Largest number of chunks per lane (32 * 8 float4 = 1024 float32 columns on the vectorised path).
MAX_VEC_CHUNKS = 8
#: Chunks per lane on the generic path; a column tile is 32 * this many columns.
GENERIC_CHUNKS = (1, 2, 4, 8, 16, 32)
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

// Vectorised path: d % VEC == 0, 16-byte aligned rows, d <= 32 * CHUNKS * VEC.
template <typename T, int LOSS, int CHUNKS>
__device__ void fused_vec(const T *__restrict__ X, const T *__restrict__ y, const T *__restrict__ w,
                          T offset, long long n, long long d, int fit_intercept, double *__restrict__ out) {
    typedef typename Vec<T>::type V;
    constexpr int VN = Vec<T>::n;
    extern __shared__ double shared[];
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long nvec = d / VN;
    for (int j = threadIdx.x; j < d; j += blockDim.x) shared[j] = 0.0;
    V wv[CHUNKS];
    T acc[CHUNKS][VN];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        long long v = lane + 32LL * c;
        wv[c] = v < nvec ? reinterpret_cast<const V *>(w)[v] : V{};
        #pragma unroll
        for (int k = 0; k < VN; ++k) acc[c][k] = (T)0;
    }
    double scalar = 0.0, rsum = 0.0;
    for (long long row = warp; row < n; row += warps) {
        const V *xr = reinterpret_cast<const V *>(X + row * d);
        V xv[CHUNKS];
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            long long v = lane + 32LL * c;
            xv[c] = v < nvec ? __ldcs(xr + v) : V{};
        }
        T dot = (T)0;
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c)
            #pragma unroll
            for (int k = 0; k < VN; ++k) dot += vget(xv[c], k) * vget(wv[c], k);
        T z = warp_sum(dot) + offset;
        double row_scalar = 0.0;
        T r = residual<T, LOSS>(z, y[row], row_scalar);
        if (lane == 0) { scalar += row_scalar; rsum += (double)r; }
        #pragma unroll
        for (int c = 0; c < CHUNKS; ++c)
            #pragma unroll
            for (int k = 0; k < VN; ++k) acc[c][k] += r * vget(xv[c], k);
    }
    __syncthreads();
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        long long v = lane + 32LL * c;
        if (v < nvec)
            #pragma unroll
            for (int k = 0; k < VN; ++k) atomicAdd(shared + v * VN + k, (double)acc[c][k]);
    }
    if (lane == 0) {
        atomicAdd(out + d + 1, scalar);
        if (fit_intercept) atomicAdd(out + d, rsum);
    }
    block_flush(shared, (int)d, out, 0, d);
}

// Generic path: any d; blockIdx.y is a tile of 32 * CHUNKS columns.
template <typename T, int LOSS, int CHUNKS>
__device__ void fused_generic(const T *__restrict__ X, const T *__restrict__ y, const T *__restrict__ w,
                              T offset, long long n, long long d, int fit_intercept,
                              double *__restrict__ out) {
    extern __shared__ double shared[];
    constexpr int TILE = 32 * CHUNKS;
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long tile0 = (long long)blockIdx.y * TILE;
    const bool whole_row = d <= TILE;
    for (int j = threadIdx.x; j < TILE; j += blockDim.x) shared[j] = 0.0;
    T wv[CHUNKS], acc[CHUNKS];
    #pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        long long col = tile0 + lane + 32LL * c;
        wv[c] = col < d ? w[col] : (T)0;
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
                if (col < tile0 || col >= tile0 + TILE) dot += xr[col] * w[col];
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

#define PGD_FUSED(NAME, T, LOSS, PATH, CHUNKS)                                                         \
extern "C" __global__ void __launch_bounds__(256)                                                    \
NAME(const T *X, const T *y, const T *w, T offset, long long n, long long d, int fit_intercept,      \
     double *out) {                                                                                  \
    PATH<T, LOSS, CHUNKS>(X, y, w, offset, n, d, fit_intercept, out);                                \
}
"""


def kernel_name(ctype: str, loss: str, vectorised: bool, chunks: int) -> str:
    """The ``extern "C"`` name of one instantiation, e.g. ``pgd_fused_float_squared_vec_4``."""
    return f"pgd_fused_{ctype}_{loss}_{'vec' if vectorised else 'gen'}_{chunks}"


def instantiations():
    """Every ``(name, ctype, loss, vectorised, chunks)`` compiled into the module."""
    for ctype in CTYPES.values():
        for loss in LOSS_CODES:
            for chunks in (1, 2, 4, MAX_VEC_CHUNKS):
                yield kernel_name(ctype, loss, True, chunks), ctype, loss, True, chunks
            for chunks in GENERIC_CHUNKS:
                yield kernel_name(ctype, loss, False, chunks), ctype, loss, False, chunks


def module_source() -> str:
    """Kernel source with every instantiation (what nvcc / NVRTC compile)."""
    lines = [KERNEL_SOURCE]
    for name, ctype, loss, vectorised, chunks in instantiations():
        path = "fused_vec" if vectorised else "fused_generic"
        lines.append(f"PGD_FUSED({name}, {ctype}, {LOSS_CODES[loss]}, {path}, {chunks})")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is launched: kernel variant, grid, block and shared memory."""

    vectorised: bool
    vec: int          # elements per 16-byte load on the vectorised path, 1 on the generic path
    chunks: int       # chunks per lane
    tiles: int        # column tiles (grid y); 1 on the vectorised path
    blocks: int       # grid x
    threads: int      # threads per block
    shared_bytes: int

    @property
    def tile_width(self) -> int:
        """Columns owned by one block (``d`` rounded up on the vectorised path)."""
        return WARP * self.chunks * self.vec


def plan_launch(n: int, d: int, itemsize: int, *, aligned: bool, max_blocks: int) -> LaunchPlan:
    """Choose the kernel variant and grid for an ``(n, d)`` slab.

    Parameters
    ----------
    n, d : int
        Rows and columns.
    itemsize : int
        4 (float32) or 8 (float64).
    aligned : bool
        Whether ``X`` and ``w`` start on 16-byte boundaries.
    max_blocks : int
        Most blocks worth launching (resident blocks on the device: SMs x blocks per SM).
    """
    vec = 16 // itemsize
    threads = WARP * WARPS_PER_BLOCK
    vectors = -(-d // vec)
    if aligned and d % vec == 0 and vectors <= WARP * MAX_VEC_CHUNKS:
        chunks = 1 << max(0, math.ceil(math.log2(max(1, -(-vectors // WARP)))))
        vectorised, tiles, width = True, 1, d
    else:
        need = -(-d // WARP)
        chunks = next((c for c in GENERIC_CHUNKS if c >= need), GENERIC_CHUNKS[-1])
        vectorised, vec, tiles = False, 1, -(-d // (WARP * chunks))
        width = WARP * chunks
    blocks = max(1, min(max_blocks, -(-n // WARPS_PER_BLOCK)))
    return LaunchPlan(vectorised, vec, chunks, tiles, blocks, threads, 8 * width)


def simulate_fused(X, y, w, offset: float, loss: str, fit_intercept: bool, plan: LaunchPlan) -> np.ndarray:
    """NumPy model of the kernel's work split (which warp, lane, chunk and tile touches which entry).

    Follows the kernel's index formulas literally and counts how often each ``X`` entry is added into the
    gradient, so tests can check that every entry is used exactly once under any :class:`LaunchPlan`.
    Returns ``out`` (``d + 2``, float64) like the kernel; raises ``AssertionError`` on a coverage error.
    """
    n, d = X.shape
    out = np.zeros(d + 2)
    used = np.zeros((n, d), dtype=np.int64)
    warps = plan.blocks * plan.threads // WARP
    for tile in range(plan.tiles):
        tile0 = tile * WARP * plan.chunks
        for warp in range(warps):
            for row in range(warp, n, warps):
                owned = []   # (lane, column) pairs this warp adds into the gradient for this tile
                for lane in range(WARP):
                    for c in range(plan.chunks):
                        if plan.vectorised:
                            v = lane + WARP * c
                            owned += [(lane, v * plan.vec + k) for k in range(plan.vec) if v < d // plan.vec]
                        elif tile0 + lane + WARP * c < d:
                            owned.append((lane, tile0 + lane + WARP * c))
                z = float(X[row].astype(np.float64) @ w.astype(np.float64)) + offset
                r, scalar = _residual(z, float(y[row]), loss)
                for _, col in owned:
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
        Whether ``out[d]`` receives the residual sum.
    """

    _modules: dict = {}

    def __init__(self, cupy, X, y, *, fit_intercept: bool):
        self.cupy, self.X, self.y = cupy, X, y
        self.fit_intercept = int(bool(fit_intercept))
        self.n, self.d = X.shape
        self.dtype = np.dtype(X.dtype)
        device = cupy.cuda.Device()
        sms = int(device.attributes["MultiProcessorCount"])
        self.max_blocks = sms * 8   # 8 blocks of 256 threads = 2048 threads per SM (full occupancy)
        self._module = self._compile()
        self._launches = {}

    def _compile(self):
        key = self.cupy.cuda.Device().id
        if key not in self._modules:
            self._modules[key] = self.cupy.RawModule(code=module_source(), options=("--std=c++17",),
                                                     name_expressions=None)
        return self._modules[key]

    def __call__(self, w, offset: float, loss: str, out, rows: slice | None = None) -> None:
        """Overwrite ``out`` (float64, ``d + 2``) with the sums over ``rows`` (all rows by default)."""
        if rows is None:
            X, y = self.X, self.y
        else:
            start, stop = rows.indices(self.n)[:2]
            X, y = self.X[start:stop], self.y[start:stop]
        n = X.shape[0]
        out.fill(0)
        if n == 0:
            return
        aligned = X.data.ptr % 16 == 0 and w.data.ptr % 16 == 0
        key = (n, aligned, loss)
        if key not in self._launches:   # plan and kernel looked up once per shape (launch overhead)
            plan = plan_launch(n, self.d, self.dtype.itemsize, aligned=aligned, max_blocks=self.max_blocks)
            name = kernel_name(CTYPES[self.dtype], loss, plan.vectorised, plan.chunks)
            self._launches[key] = (plan, self._module.get_function(name))
        plan, kernel = self._launches[key]
        scalar = self.dtype.type(offset)
        kernel((plan.blocks, plan.tiles), (plan.threads,),
               (X, y, w, scalar, np.int64(n), np.int64(self.d), np.int32(self.fit_intercept), out),
               shared_mem=plan.shared_bytes)
