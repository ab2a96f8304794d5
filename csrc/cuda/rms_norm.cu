// Fused RMSNorm CUDA kernels (math and params: include/ttt_kernels/rms_norm.h).
//
// Layout: blockDim.x threads (one warp, or several for long rows) share a row; blockDim.y row slots per block.
// Thread x of a slot owns the row's 16-byte vectors x, x + blockDim.x, ... (scalars when dim or a pointer is not
// 16-byte aligned), so every global access is coalesced.
// Each thread loads its share of a row into registers with all loads in flight at once (kFwdVecsPerThread /
// kBwdVecsPerThread vectors); rows too long for that are processed in chunks and re-read in the second pass.
// Forward: grid = ceil(rows / blockDim.y). Pass 1 sums x^2 in fp32 (fp64); pass 2 writes out = weight * x * rstd.
// Backward: a grid sized to fill the GPU walks the rows. Pass 1 reduces sum(g * w * x); pass 2 writes grad_x and
//   adds g * x * rstd to the slot's grad_weight partial, a [dim] fp32 (fp64) array in shared memory whose elements
//   are each touched by one thread only. Each block then writes the sum of its slots to workspace[blockIdx.x, :], and
//   rms_norm_dw_reduce_kernel sums the workspace over blocks in a fixed order: no atomics, bitwise reproducible.
// Double backward: the backward's grid, row walk and grad_weight reduction (walk_rows_with_weight_grad); pass 1
//   reduces the row's four sums, pass 2 writes grad_grad_out and grad_x and adds g h to the partial. Its rows are
//   read from global memory in both passes (no register copy: it reads up to four tensors per row).
// RoPE (params.rope): pairs of elements never straddle a thread's vectors (the launchers take 2-element vectors at
// least), so each thread rotates its own pairs: the forward's output, the (double) backward's grad_out (R^T) and the
// double backward's grad_grad_out (R).
// Loops over compile-time trip counts (vectors per thread, elements per vector) are fully unrolled by nvcc without
// `#pragma unroll` (which the simulator's host compiler would reject as unknown): the per-thread arrays stay in
// registers (ptxas: 0-byte stack frames).
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/rms_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kWarp = 32;
// Threads per block at most. The backward keeps two rows' worth of vectors (x and grad_out) in registers and needs
// more than the 64 registers per thread a 1024-thread block allows.
constexpr int kFwdMaxThreads = 1024;
constexpr int kBwdMaxThreads = 512;
// 16-byte vectors per thread and row that the launch aims for: enough independent loads in flight, few idle threads.
// The backward holds two tensors' vectors (x and grad_out) in registers, hence fewer.
constexpr int kFwdVecsPerThread = 4;
constexpr int kBwdVecsPerThread = 2;
// At least this many threads per block (several short rows share a block).
constexpr int kMinThreadsPerBlock = 128;
// The backward grid holds about this many threads (half an H100's resident threads: plenty for a memory-bound
// kernel) so that each block reuses its shared-memory grad_weight partial over several rows.
constexpr int64_t kBwdGridThreads = int64_t{1} << 17;
// Shared memory for the backward's grad_weight partials; fits sm_80's 163 KiB per-block limit.
constexpr int64_t kBwdMaxSmemBytes = 160 * 1024;
// rms_norm_dw_reduce_kernel tile: 32 columns x 16 independent partial sums over the workspace rows.
constexpr int kReduceCols = 32;
constexpr int kReduceSplits = 16;

// Math type: float for 16- and 32-bit inputs, double for double.
template <typename T>
struct AccumOf {
  using type = float;
};
template <>
struct AccumOf<double> {
  using type = double;
};
template <typename T>
using Accum = typename AccumOf<T>::type;

__device__ __forceinline__ float to_accum(float v) { return v; }
__device__ __forceinline__ double to_accum(double v) { return v; }
__device__ __forceinline__ float to_accum(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_accum(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_accum(Accum<T> v);
template <>
__device__ __forceinline__ float from_accum<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_accum<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_accum<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_accum<__half>(float v) {
  return __float2half_rn(v);
}

__device__ __forceinline__ float reciprocal_sqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double reciprocal_sqrt(double v) { return 1.0 / sqrt(v); }

// kN consecutive elements moved by one vector access (16 bytes at most).
template <typename T, int kN>
struct alignas(sizeof(T) * kN < 16 ? sizeof(T) * kN : 16) Pack {
  T v[kN];
};

// Elements per 16-byte vector.
template <typename T>
constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));

// Sum of v over the blockDim.x threads of row slot threadIdx.y. blockDim.x is a power of two <= 32 (slots share a
// warp) or a multiple of 32. The xor butterfly and the fixed-order sum of the warp totals give every thread of the
// slot the same bits. Every thread of the block must call it: it holds two barriers when a row spans several warps.
// scratch: [blockDim.y * blockDim.x / 32] (<= 32 entries).
template <typename A>
__device__ __forceinline__ A row_sum(A v, A* scratch) {
  const int lanes = blockDim.x < kWarp ? static_cast<int>(blockDim.x) : kWarp;
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warps = static_cast<int>(blockDim.x) / kWarp;
  if (warps <= 1) return v;
  A* slot = scratch + threadIdx.y * warps;
  if (threadIdx.x % kWarp == 0) slot[threadIdx.x / kWarp] = v;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < warps; ++w) total += slot[w];
  __syncthreads();  // the next call overwrites scratch
  return total;
}

// The (cos, sin) pairs of a row's RoPE position ([dim] values: pair e / 2 at e, e + 1), or nullptr without RoPE.
template <typename A>
__device__ __forceinline__ const A* rope_row(const RmsNormParams& p, int64_t row) {
  if (p.rope == nullptr) return nullptr;
  return static_cast<const A*>(p.rope) + row / p.rope_heads % p.rope_positions * p.dim;
}

// v in the math type, each pair (a, b) at elements (e0 + k, e0 + k + 1) of the row turned by R (kInverse false) or
// R^T when cs is not nullptr (kVec is even then).
template <bool kInverse, typename A, int kVec, typename V>
__device__ __forceinline__ Pack<A, kVec> rotated(const V& v, const A* cs, int e0) {
  Pack<A, kVec> r;
  for (int k = 0; k < kVec; ++k) r.v[k] = to_accum(v.v[k]);
  if constexpr (kVec % 2 == 0) {
    if (cs != nullptr) {
      const A sign = kInverse ? A(-1) : A(1);
      for (int k = 0; k < kVec; k += 2) {
        const A a = r.v[k], b = r.v[k + 1], c = cs[e0 + k], sn = cs[e0 + k + 1];
        r.v[k] = a * c - sign * b * sn;
        r.v[k + 1] = sign * a * sn + b * c;
      }
    }
  }
  return r;
}

// Loads this thread's vectors base + j * blockDim.x (j < kN, index < nvec) of a row: all loads are issued before
// any is used.
template <int kN, typename Vec>
__device__ __forceinline__ void load_chunk(Vec (&dst)[kN], const Vec* __restrict__ src, int base, int nvec) {
  for (int j = 0; j < kN; ++j) {
    const int i = base + j * static_cast<int>(blockDim.x);
    if (i < nvec) dst[j] = src[i];
  }
}

// out[row] = [residual[row] +] weight * x[row] * rstd[row], rstd[row] = 1 / sqrt(mean(x[row]^2) + eps), turned by
// R with RoPE. x, residual, out: [rows, dim].
template <typename T, int kVec>
__global__ void __launch_bounds__(kFwdMaxThreads, 1) rms_norm_fwd_kernel(const RmsNormParams p) {
  using A = Accum<T>;
  using Vec = Pack<T, kVec>;
  __shared__ A scratch[kFwdMaxThreads / kWarp];

  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool valid = row < p.rows;  // slots past the last row still join row_sum's barriers
  const int nvec = valid ? static_cast<int>(p.dim / kVec) : 0;
  const int64_t offset = row * nvec;
  const Vec* __restrict__ x = static_cast<const Vec*>(p.x) + offset;
  // Vectors the row's threads cover per chunk. The launch makes one chunk cover the row (x then stays in registers
  // for the second pass) unless that would take more than kFwdMaxThreads threads.
  const int chunk = kFwdVecsPerThread * static_cast<int>(blockDim.x);

  Vec xv[kFwdVecsPerThread] = {};
  A sumsq = 0;
  for (int base = threadIdx.x; base < nvec; base += chunk) {
    load_chunk(xv, x, base, nvec);
    for (int j = 0; j < kFwdVecsPerThread; ++j) {
      if (base + j * static_cast<int>(blockDim.x) >= nvec) continue;
      for (int k = 0; k < kVec; ++k) {
        const A a = to_accum(xv[j].v[k]);
        sumsq += a * a;
      }
    }
  }
  const A rstd = reciprocal_sqrt(row_sum(sumsq, scratch) / static_cast<A>(p.dim) + static_cast<A>(p.eps));
  if (!valid) return;
  if (threadIdx.x == 0) static_cast<A*>(p.rstd)[row] = rstd;

  const Vec* __restrict__ w = static_cast<const Vec*>(p.weight);
  const Vec* __restrict__ res = p.residual ? static_cast<const Vec*>(p.residual) + offset : nullptr;
  const A* __restrict__ cs = rope_row<A>(p, row);
  Vec* __restrict__ out = static_cast<Vec*>(p.out) + offset;
  for (int base = threadIdx.x; base < nvec; base += chunk) {
    if (nvec > chunk) load_chunk(xv, x, base, nvec);
    for (int j = 0; j < kFwdVecsPerThread; ++j) {
      const int i = base + j * static_cast<int>(blockDim.x);
      if (i >= nvec) continue;
      const Vec wv = w[i];
      Vec o;
      if constexpr (kVec % 2 == 0) {
        if (cs != nullptr) {  // RoPE: pairs turned as they are normed (two values live, not a vector's worth)
          for (int k = 0; k < kVec; k += 2) {
            const A a = to_accum(wv.v[k]) * (to_accum(xv[j].v[k]) * rstd);
            const A b = to_accum(wv.v[k + 1]) * (to_accum(xv[j].v[k + 1]) * rstd);
            const A c = cs[i * kVec + k], sn = cs[i * kVec + k + 1];
            o.v[k] = from_accum<T>(a * c - b * sn);
            o.v[k + 1] = from_accum<T>(a * sn + b * c);
          }
          out[i] = o;
          continue;
        }
      }
      Vec rv = {};
      if (res != nullptr) rv = res[i];
      for (int k = 0; k < kVec; ++k) {
        const A normed = to_accum(wv.v[k]) * (to_accum(xv[j].v[k]) * rstd);
        o.v[k] = from_accum<T>(res != nullptr ? to_accum(rv.v[k]) + normed : normed);
      }
      out[i] = o;
    }
  }
}

// For the rows blockIdx.x * blockDim.y + slot + k * gridDim.x * blockDim.y: row_fn(row, valid, dw), with dw the
// slot's [dim / kVec] grad_weight partial (zeroed first); valid is false for the slots past the last row in the last
// iteration, which must still join row_sum's barriers (the trip count depends on blockIdx only). Then
// workspace[blockIdx.x, :] = the sum of the block's partials. Dynamic shared memory: [blockDim.y, dim] Accum<T>.
template <typename A, int kVec, typename RowFn>
__device__ __forceinline__ void walk_rows_with_weight_grad(const RmsNormParams& p, RowFn&& row_fn) {
  using AccVec = Pack<A, kVec>;
  const int nvec = static_cast<int>(p.dim / kVec);
  AccVec* dw = dynamic_smem<AccVec>() + threadIdx.y * nvec;
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) dw[i] = AccVec{};
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t base_row = static_cast<int64_t>(blockIdx.x) * blockDim.y; base_row < p.rows; base_row += row_stride) {
    const int64_t row = base_row + threadIdx.y;
    row_fn(row, row < p.rows, dw);
  }

  __syncthreads();
  const A* partials = dynamic_smem<A>();
  A* __restrict__ ws = static_cast<A*>(p.workspace) + static_cast<int64_t>(blockIdx.x) * p.dim;
  const int threads = static_cast<int>(blockDim.x * blockDim.y);
  for (int c = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x); c < p.dim; c += threads) {
    A sum = 0;
    for (int slot = 0; slot < static_cast<int>(blockDim.y); ++slot) sum += partials[slot * p.dim + c];
    ws[c] = sum;
  }
}

// grad_x[row] = rstd * g * w - x * rstd^3 * sum(g * w * x) / dim for the rows walk_rows_with_weight_grad visits;
// workspace[blockIdx.x, :] = sum over those rows of g * x * rstd. g = grad_out, or R^T grad_out with RoPE.
template <typename T, int kVec>
__global__ void __launch_bounds__(kBwdMaxThreads, 1) rms_norm_bwd_kernel(const RmsNormParams p) {
  using A = Accum<T>;
  using Vec = Pack<T, kVec>;
  using AccVec = Pack<A, kVec>;
  __shared__ A scratch[kBwdMaxThreads / kWarp];

  const int nvec = static_cast<int>(p.dim / kVec);
  const int chunk = kBwdVecsPerThread * static_cast<int>(blockDim.x);
  const Vec* __restrict__ w = static_cast<const Vec*>(p.weight);
  const A* __restrict__ rstds = static_cast<const A*>(p.rstd);
  walk_rows_with_weight_grad<A, kVec>(p, [&](int64_t row, bool valid, AccVec* dw) {
    const int row_nvec = valid ? nvec : 0;
    const int64_t offset = row * nvec;
    const Vec* __restrict__ x = static_cast<const Vec*>(p.x) + offset;
    const Vec* __restrict__ g = static_cast<const Vec*>(p.grad_out) + offset;
    const A* __restrict__ cs = valid ? rope_row<A>(p, row) : nullptr;

    Vec xv[kBwdVecsPerThread] = {};
    Vec gv[kBwdVecsPerThread] = {};
    A dot = 0;
    for (int base = threadIdx.x; base < row_nvec; base += chunk) {
      load_chunk(xv, x, base, row_nvec);
      load_chunk(gv, g, base, row_nvec);
      for (int j = 0; j < kBwdVecsPerThread; ++j) {
        const int i = base + j * static_cast<int>(blockDim.x);
        if (i >= row_nvec) continue;
        const Vec wv = w[i];
        const AccVec ga = rotated<true, A, kVec>(gv[j], cs, i * kVec);
        for (int k = 0; k < kVec; ++k) dot += ga.v[k] * to_accum(wv.v[k]) * to_accum(xv[j].v[k]);
      }
    }
    dot = row_sum(dot, scratch);
    if (!valid) return;

    const A rstd = rstds[row];
    const A coef = rstd * rstd * rstd * dot / static_cast<A>(p.dim);
    Vec* __restrict__ dx = static_cast<Vec*>(p.grad_x) + offset;
    for (int base = threadIdx.x; base < nvec; base += chunk) {
      if (nvec > chunk) {
        load_chunk(xv, x, base, nvec);
        load_chunk(gv, g, base, nvec);
      }
      for (int j = 0; j < kBwdVecsPerThread; ++j) {
        const int i = base + j * static_cast<int>(blockDim.x);
        if (i >= nvec) continue;
        const Vec wv = w[i];
        const AccVec ga = rotated<true, A, kVec>(gv[j], cs, i * kVec);
        AccVec acc = dw[i];
        Vec o;
        for (int k = 0; k < kVec; ++k) {
          const A xk = to_accum(xv[j].v[k]);
          const A gk = ga.v[k];
          o.v[k] = from_accum<T>(rstd * gk * to_accum(wv.v[k]) - coef * xk);
          acc.v[k] += gk * xk * rstd;
        }
        dx[i] = o;
        dw[i] = acc;
      }
    }
  });
}

// The double backward (math: include/ttt_kernels/rms_norm.h) for the rows walk_rows_with_weight_grad visits:
// grad_grad_out and grad_x per row, workspace[blockIdx.x, :] = sum over the rows of g h. grad_grad_x (u) and
// grad_grad_weight (v) may be nullptr (zero). With RoPE, g = R^T grad_out and grad_grad_out = R (the formula's).
template <typename T, int kVec>
__global__ void __launch_bounds__(kBwdMaxThreads, 1) rms_norm_bwd_bwd_kernel(const RmsNormParams p) {
  using A = Accum<T>;
  using Vec = Pack<T, kVec>;
  using AccVec = Pack<A, kVec>;
  __shared__ A scratch[kBwdMaxThreads / kWarp];

  const int nvec = static_cast<int>(p.dim / kVec);
  const Vec* __restrict__ w = static_cast<const Vec*>(p.weight);
  const Vec* __restrict__ v = static_cast<const Vec*>(p.grad_grad_weight);
  const A* __restrict__ rstds = static_cast<const A*>(p.rstd);
  walk_rows_with_weight_grad<A, kVec>(p, [&](int64_t row, bool valid, AccVec* dw) {
    const int row_nvec = valid ? nvec : 0;
    const int64_t offset = row * nvec;
    const Vec* __restrict__ x = static_cast<const Vec*>(p.x) + offset;
    const Vec* __restrict__ g = static_cast<const Vec*>(p.grad_out) + offset;
    const Vec* __restrict__ u = p.grad_grad_x != nullptr ? static_cast<const Vec*>(p.grad_grad_x) + offset : nullptr;
    const A* __restrict__ cs = valid ? rope_row<A>(p, row) : nullptr;
    // Element k of vector i of u and v (zero when absent).
    const auto u_at = [&](int i, int k) { return u != nullptr ? to_accum(u[i].v[k]) : A(0); };
    const auto v_at = [&](int i, int k) { return v != nullptr ? to_accum(v[i].v[k]) : A(0); };
    A s = 0, t = 0, q = 0, pv = 0;
    for (int i = threadIdx.x; i < row_nvec; i += blockDim.x) {
      const Vec xv = x[i], wv = w[i];
      const AccVec ga = rotated<true, A, kVec>(g[i], cs, i * kVec);
      for (int k = 0; k < kVec; ++k) {
        const A xk = to_accum(xv.v[k]), gk = ga.v[k], ak = gk * to_accum(wv.v[k]), uk = u_at(i, k);
        s += ak * xk;
        t += uk * xk;
        q += uk * ak;
        pv += v_at(i, k) * gk * xk;
      }
    }
    s = row_sum(s, scratch);
    t = row_sum(t, scratch);
    q = row_sum(q, scratch);
    pv = row_sum(pv, scratch);
    if (!valid) return;

    const A r = rstds[row];
    const A n = static_cast<A>(p.dim);
    const A c = r * r * r / n;
    const A coef_x = 3 * c * r * r * s * t / n - c * (q + pv);
    Vec* __restrict__ dg = static_cast<Vec*>(p.grad_grad_out) + offset;
    Vec* __restrict__ dx = static_cast<Vec*>(p.grad_x) + offset;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      const Vec xv = x[i], wv = w[i];
      const AccVec ga = rotated<true, A, kVec>(g[i], cs, i * kVec);
      AccVec acc = dw[i];
      AccVec dga;
      Vec og, ox;
      for (int k = 0; k < kVec; ++k) {
        const A xk = to_accum(xv.v[k]), gk = ga.v[k], wk = to_accum(wv.v[k]);
        const A uk = u_at(i, k), vk = v_at(i, k);
        const A h = r * uk - c * t * xk;
        dga.v[k] = wk * h + r * vk * xk;
        ox.v[k] = from_accum<T>(coef_x * xk - c * t * gk * wk - c * s * uk + r * vk * gk);
        acc.v[k] += gk * h;
      }
      dga = rotated<false, A, kVec>(dga, cs, i * kVec);
      for (int k = 0; k < kVec; ++k) og.v[k] = from_accum<T>(dga.v[k]);
      dg[i] = og;
      dx[i] = ox;
      dw[i] = acc;
    }
  });
}

// grad_weight[c] = sum over b < partials of workspace[b, c] (workspace: [partials, dim]), in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kReduceCols* kReduceSplits)
    rms_norm_dw_reduce_kernel(const RmsNormParams p, const int partials) {
  using A = Accum<T>;
  __shared__ A split_sums[kReduceSplits][kReduceCols];

  const int64_t c = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  const A* __restrict__ ws = static_cast<const A*>(p.workspace);
  A sum = 0;
  if (c < p.dim) {
    for (int b = threadIdx.y; b < partials; b += kReduceSplits) sum += ws[b * p.dim + c];
  }
  split_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < p.dim) {
    A total = 0;
    for (int s = 0; s < kReduceSplits; ++s) total += split_sums[s][threadIdx.x];
    static_cast<T*>(p.grad_weight)[c] = from_accum<T>(total);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned_to(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Elements per vector access of an op's rows: 16-byte vectors when dim and every pointer (nullptr: absent) allow,
// else single elements, or pairs with RoPE (a thread rotates whole pairs; dim is even then).
template <typename T>
int vector_width(const RmsNormParams& p, std::initializer_list<const void*> pointers, const char* op) {
  const auto all_aligned = [&](size_t bytes) {
    return std::all_of(pointers.begin(), pointers.end(), [&](const void* ptr) { return aligned_to(ptr, bytes); });
  };
  if (p.dim % kVecElems<T> == 0 && all_aligned(16)) return kVecElems<T>;
  if (p.rope == nullptr) return 1;
  if (!all_aligned(2 * sizeof(T))) {
    throw std::invalid_argument(std::string(op) + ": with rope, every tensor must start at an even element (" +
                                std::to_string(2 * sizeof(T)) + "-byte aligned): RoPE rotates pairs of elements");
  }
  return 2;
}

// launch.template operator()<kVec>() for the width vector_width chose.
template <typename T, typename Launch>
void with_vector_width(int width, Launch&& launch) {
  if (width == kVecElems<T>) {
    launch(std::integral_constant<int, kVecElems<T>>{});
  } else if (width == 2) {
    launch(std::integral_constant<int, 2>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

// Threads per row and row slots per block. A function of (dim, dtype) only, so the backward's workspace size does
// not depend on pointer alignment.
struct RowLayout {
  int threads_per_row;
  int rows_per_block;
};

// About vecs_per_thread 16-byte vectors per thread: a power of two <= 32 threads per row (several rows per warp) or a
// multiple of 32 up to max_threads; kMinThreadsPerBlock threads per block at least.
template <typename T>
RowLayout row_layout(int64_t dim, int vecs_per_thread, int max_threads) {
  const int64_t wanted = ceil_div(ceil_div(dim, kVecElems<T>), vecs_per_thread);
  int threads = 1;
  if (wanted > kWarp) {
    threads = static_cast<int>(std::min<int64_t>(ceil_div(wanted, kWarp) * kWarp, max_threads));
  } else {
    while (threads < wanted) threads *= 2;
  }
  return {threads, std::max(1, kMinThreadsPerBlock / threads)};
}

template <typename T>
int64_t bwd_blocks(const RmsNormParams& p) {
  const RowLayout layout = row_layout<T>(p.dim, kBwdVecsPerThread, kBwdMaxThreads);
  const int64_t threads = int64_t{layout.threads_per_row} * layout.rows_per_block;
  const int64_t needed = ceil_div(p.rows, layout.rows_per_block);
  return std::max<int64_t>(1, std::min(needed, kBwdGridThreads / threads));
}

template <typename T, int kVec>
void launch_fwd(const RmsNormParams& p, void* stream) {
  const RowLayout layout = row_layout<T>(p.dim, kFwdVecsPerThread, kFwdMaxThreads);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.rows, layout.rows_per_block)));
  const dim3 block(layout.threads_per_row, layout.rows_per_block);
  launch(rms_norm_fwd_kernel<T, kVec>, grid, block, 0, stream, p);
}

// The backward (kDouble false) or the double backward: the row kernel, then the grad_weight reduction.
template <typename T, int kVec, bool kDouble>
void launch_bwd(const RmsNormParams& p, void* stream) {
  const char* op = kDouble ? "rms_norm_bwd_bwd" : "rms_norm_bwd";
  const RowLayout layout = row_layout<T>(p.dim, kBwdVecsPerThread, kBwdMaxThreads);
  const int64_t smem = int64_t{layout.rows_per_block} * p.dim * static_cast<int64_t>(sizeof(Accum<T>));
  if (smem > kBwdMaxSmemBytes) {
    throw std::runtime_error(std::string(op) + ": dim=" + std::to_string(p.dim) + " needs " + std::to_string(smem) +
                             " bytes of shared memory for the grad_weight partials; at most " +
                             std::to_string(kBwdMaxSmemBytes) + " are supported");
  }
  const int64_t blocks = bwd_blocks<T>(p);
  launch(kDouble ? rms_norm_bwd_bwd_kernel<T, kVec> : rms_norm_bwd_kernel<T, kVec>,
         dim3(static_cast<unsigned>(blocks)), dim3(layout.threads_per_row, layout.rows_per_block),
         static_cast<size_t>(smem), stream, p);
  launch(rms_norm_dw_reduce_kernel<T>, dim3(static_cast<unsigned>(ceil_div(p.dim, kReduceCols))),
         dim3(kReduceCols, kReduceSplits), 0, stream, p, static_cast<int>(blocks));
}

}  // namespace

void rms_norm_fwd(const RmsNormParams& p, void* stream) {
  if (p.rows == 0 || p.dim == 0) return;
  dispatch_dtype<__nv_bfloat16, __half>(p.dtype, "rms_norm_fwd", [&](auto tag) {
    using T = decltype(tag);
    const int width = vector_width<T>(p, {p.x, p.weight, p.out, p.residual}, "rms_norm_fwd");
    with_vector_width<T>(width, [&](auto vec) { launch_fwd<T, decltype(vec)::value>(p, stream); });
  });
}

int64_t rms_norm_bwd_workspace_bytes(const RmsNormParams& p) {
  int64_t rows = 1;  // one partial sum of grad_weight per block
  dispatch_dtype<__nv_bfloat16, __half>(p.dtype, "rms_norm_bwd",
                                        [&](auto tag) { rows = bwd_blocks<decltype(tag)>(p); });
  return rows * p.dim * accum_bytes(p.dtype);
}

void rms_norm_bwd(const RmsNormParams& p, void* stream) {
  if (p.dim == 0) return;
  dispatch_dtype<__nv_bfloat16, __half>(p.dtype, "rms_norm_bwd", [&](auto tag) {
    using T = decltype(tag);
    const int width = vector_width<T>(p, {p.x, p.weight, p.grad_out, p.grad_x}, "rms_norm_bwd");
    with_vector_width<T>(width, [&](auto vec) { launch_bwd<T, decltype(vec)::value, false>(p, stream); });
  });
}

void rms_norm_bwd_bwd(const RmsNormParams& p, void* stream) {
  if (p.dim == 0) return;
  dispatch_dtype<__nv_bfloat16, __half>(p.dtype, "rms_norm_bwd_bwd", [&](auto tag) {
    using T = decltype(tag);
    const int width = vector_width<T>(
        p, {p.x, p.weight, p.grad_out, p.grad_x, p.grad_grad_out, p.grad_grad_x, p.grad_grad_weight},
        "rms_norm_bwd_bwd");
    with_vector_width<T>(width, [&](auto vec) { launch_bwd<T, decltype(vec)::value, true>(p, stream); });
  });
}

}  // namespace ttt::TTT_CUDA_NS
