// Fused RMSNorm CPU kernels (math and params: include/ttt_kernels/rms_norm.h).
//
// Rows are split over threads with parallel_for (include/ttt_kernels/cpu_parallel.h). Each row is handled in two
// vectorized passes (`omp simd`): a reduction, then the element-wise output; the row is still in L1/L2 for the second
// pass. 16-bit inputs are widened to float32 inside the loops. The backward accumulates grad_weight per chunk of rows
// into a private [dim] partial and sums the partials in chunk order: no atomics, and the chunking does not depend on
// the thread count, so the result is bitwise reproducible.
#include "ttt_kernels/rms_norm.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <fp16/fp16.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "ttt_kernels/cpu_parallel.h"

namespace ttt::cpu {
namespace {

// Elements per parallel_for grain: large enough to amortize a task, small enough to split mid-sized inputs.
constexpr int64_t kGrainElements = 1 << 15;
// Backward row chunks: at most kMaxChunks (grad_weight partials of [dim] each), at least kMinChunkRows rows each.
constexpr int64_t kMaxChunks = 64;
constexpr int64_t kMinChunkRows = 16;

template <typename T>
using Accum = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Element <-> math type conversions, written so that `omp simd` loops vectorize: c10's BFloat16 and Half
// conversions keep loops scalar (a NaN branch; F16C scalar intrinsics). BFloat16 rounds to nearest even with c10's
// NaN handling; Half uses the branch-free IEEE conversions of the FP16 library that torch ships (fp16/fp16.h),
// also round to nearest even.
template <typename T>
inline Accum<T> widen(T v) {
  return static_cast<Accum<T>>(v);
}
template <>
inline float widen(c10::BFloat16 v) {
  return std::bit_cast<float>(uint32_t{v.x} << 16);
}
template <>
inline float widen(c10::Half v) {
  return fp16_ieee_to_fp32_value(v.x);
}

template <typename T>
inline T narrow(Accum<T> v) {
  return static_cast<T>(v);
}
template <>
inline c10::BFloat16 narrow(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(std::isnan(v) ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded), c10::BFloat16::from_bits());
}
template <>
inline c10::Half narrow(float v) {
  return c10::Half(fp16_ieee_from_fp32_value(v), c10::Half::from_bits());
}

// The row kernels take plain restrict-qualified pointers (not lambda captures) so that the compiler sees
// independent, unit-stride accesses and vectorizes every loop.

// rstd = 1 / sqrt(mean(x^2) + eps) of one row.
template <typename T>
Accum<T> row_rstd(const T* __restrict__ x, int64_t dim, Accum<T> eps) {
  using A = Accum<T>;
  A sumsq = 0;
#pragma omp simd reduction(+ : sumsq)
  for (int64_t i = 0; i < dim; ++i) {
    const A v = widen(x[i]);
    sumsq += v * v;
  }
  return A(1) / std::sqrt(sumsq / static_cast<A>(dim) + eps);
}

// out[i] = [res[i] +] w[i] * x[i] * rstd for one row of `dim` elements (res may be null); returns rstd.
template <typename T>
Accum<T> fwd_row(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ res, T* __restrict__ out,
                 int64_t dim, Accum<T> eps) {
  const Accum<T> rstd = row_rstd(x, dim, eps);
  if (res == nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) out[i] = narrow<T>(widen(w[i]) * (widen(x[i]) * rstd));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) out[i] = narrow<T>(widen(res[i]) + widen(w[i]) * (widen(x[i]) * rstd));
  }
  return rstd;
}

// out = R(w * x * rstd) for one row, R rotating pair i by (cs[2i], cs[2i + 1]) = (cos, sin) of the row's position;
// returns rstd.
template <typename T>
Accum<T> fwd_rope_row(const T* __restrict__ x, const T* __restrict__ w, const Accum<T>* __restrict__ cs,
                      T* __restrict__ out, int64_t dim, Accum<T> eps) {
  using A = Accum<T>;
  const A rstd = row_rstd(x, dim, eps);
#pragma omp simd
  for (int64_t i = 0; i < dim; i += 2) {
    const A a = widen(w[i]) * (widen(x[i]) * rstd);
    const A b = widen(w[i + 1]) * (widen(x[i + 1]) * rstd);
    out[i] = narrow<T>(a * cs[i] - b * cs[i + 1]);
    out[i + 1] = narrow<T>(a * cs[i + 1] + b * cs[i]);
  }
  return rstd;
}

// dst = R^T src (inverse) or R src for one row of pairs (R: fwd_rope_row), in the math type.
template <bool kInverse, typename S, typename A>
void rotate_row(const S* __restrict__ src, const A* __restrict__ cs, A* __restrict__ dst, int64_t dim) {
  const A sign = kInverse ? A(-1) : A(1);
#pragma omp simd
  for (int64_t i = 0; i < dim; i += 2) {
    const A a = widen(src[i]);
    const A b = widen(src[i + 1]);
    dst[i] = a * cs[i] - sign * b * cs[i + 1];
    dst[i + 1] = sign * a * cs[i + 1] + b * cs[i];
  }
}

// dx = rstd * g * w - x * rstd^3 * mean(g * w * x) for one row; adds g * x * rstd to the grad_weight partial dw.
// g is grad_out (T) or, with RoPE, R^T grad_out (the math type).
template <typename T, typename G>
void bwd_row(const T* __restrict__ x, const G* __restrict__ g, const T* __restrict__ w, Accum<T> rstd,
             T* __restrict__ dx, Accum<T>* __restrict__ dw, int64_t dim) {
  using A = Accum<T>;
  A dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < dim; ++i) dot += widen(g[i]) * widen(w[i]) * widen(x[i]);
  const A coef = rstd * rstd * rstd * dot / static_cast<A>(dim);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) {
    const A xi = widen(x[i]);
    const A gi = widen(g[i]);
    dx[i] = narrow<T>(rstd * gi * widen(w[i]) - coef * xi);
    dw[i] += gi * xi * rstd;
  }
}

// The double backward of one row (math: include/ttt_kernels/rms_norm.h): grad_grad_out dg and grad_x dx; adds g h to
// the grad_weight partial dw. u (grad_grad_x, this row) and v (grad_grad_weight) may be nullptr (zero). g and dg are
// grad_out and grad_grad_out (T) or, with RoPE, R^T grad_out and R^T grad_grad_out (the math type).
template <typename T, typename G>
void bwd_bwd_row(const T* __restrict__ x, const G* __restrict__ g, const T* __restrict__ w, Accum<T> r,
                 const T* __restrict__ u, const T* __restrict__ v, G* __restrict__ dg, T* __restrict__ dx,
                 Accum<T>* __restrict__ dw, int64_t dim) {
  using A = Accum<T>;
  const auto at = [](const T* t, int64_t i) { return t == nullptr ? A(0) : widen(t[i]); };
  A s = 0, t = 0, q = 0, p = 0;
#pragma omp simd reduction(+ : s, t, q, p)
  for (int64_t i = 0; i < dim; ++i) {
    const A xi = widen(x[i]);
    const A gi = widen(g[i]);
    const A ai = gi * widen(w[i]);
    const A ui = at(u, i);
    s += ai * xi;
    t += ui * xi;
    q += ui * ai;
    p += at(v, i) * gi * xi;
  }
  const A n = static_cast<A>(dim);
  const A c = r * r * r / n;
  const A coef_x = 3 * c * r * r * s * t / n - c * (q + p);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) {
    const A xi = widen(x[i]);
    const A gi = widen(g[i]);
    const A wi = widen(w[i]);
    const A ui = at(u, i);
    const A vi = at(v, i);
    const A h = r * ui - c * t * xi;
    dg[i] = narrow<G>(wi * h + r * vi * xi);
    dx[i] = narrow<T>(coef_x * xi - c * t * gi * wi - c * s * ui + r * vi * gi);
    dw[i] += gi * h;
  }
}

// The RoPE position of a row (include/ttt_kernels/rms_norm.h).
inline int64_t rope_position(const RmsNormParams& p, int64_t row) { return row / p.rope_heads % p.rope_positions; }

// The calling thread's scratch row `slot` (0 or 1) of at least dim elements of A, reused across calls.
template <typename A>
A* row_buffer(int64_t dim, int slot) {
  thread_local std::vector<A> buffers[2];
  std::vector<A>& buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < dim) buffer.resize(dim);
  return buffer.data();
}

// Runs row_fn(row, dw) over the rows in chunks (at least kGrainElements elements each, at most kMaxChunks: small
// inputs run on the calling thread), dw being the chunk's [dim] grad_weight partial, then writes grad_weight = the
// partials summed in chunk order: a thread-count-independent split, so results are bitwise reproducible.
template <typename T, typename RowFn>
void rows_with_weight_grad(const RmsNormParams& p, const RowFn& row_fn) {
  using A = Accum<T>;
  const int64_t dim = p.dim;
  const int64_t min_rows = std::max<int64_t>(kMinChunkRows, kGrainElements / dim);
  const int64_t chunks = std::clamp<int64_t>(ceil_div(p.rows, min_rows), 1, kMaxChunks);
  const int64_t chunk_rows = ceil_div(p.rows, chunks);
  // [chunks, dim] grad_weight partials, one per chunk of rows.
  const std::unique_ptr<A[]> partials(new A[chunks * dim]);
  parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      A* dw = partials.get() + chunk * dim;
      std::fill_n(dw, dim, A(0));
      const int64_t row_end = std::min(p.rows, (chunk + 1) * chunk_rows);
      for (int64_t row = chunk * chunk_rows; row < row_end; ++row) row_fn(row, dw);
    }
  });
  A* __restrict__ total = partials.get();
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const A* __restrict__ part = partials.get() + chunk * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) total[i] += part[i];
  }
  T* __restrict__ dw = static_cast<T*>(p.grad_weight);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) dw[i] = narrow<T>(total[i]);
}

template <typename T>
void fwd(const RmsNormParams& p) {
  using A = Accum<T>;
  const int64_t dim = p.dim;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* res = static_cast<const T*>(p.residual);
  T* out = static_cast<T*>(p.out);
  A* rstd = static_cast<A*>(p.rstd);
  const A eps = static_cast<A>(p.eps);
  const A* rope = static_cast<const A*>(p.rope);
  parallel_for(0, p.rows, std::max<int64_t>(1, kGrainElements / dim), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t offset = row * dim;
      rstd[row] = rope != nullptr
                      ? fwd_rope_row(x + offset, w, rope + rope_position(p, row) * dim, out + offset, dim, eps)
                      : fwd_row(x + offset, w, res ? res + offset : nullptr, out + offset, dim, eps);
    }
  });
}

template <typename T>
void bwd(const RmsNormParams& p) {
  using A = Accum<T>;
  const int64_t dim = p.dim;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* g = static_cast<const T*>(p.grad_out);
  const A* rstd = static_cast<const A*>(p.rstd);
  T* dx = static_cast<T*>(p.grad_x);
  const A* rope = static_cast<const A*>(p.rope);
  rows_with_weight_grad<T>(p, [&](int64_t row, A* dw) {
    const int64_t offset = row * dim;
    if (rope == nullptr) {
      bwd_row(x + offset, g + offset, w, rstd[row], dx + offset, dw, dim);
      return;
    }
    A* rotated = row_buffer<A>(dim, 0);  // R^T grad_out
    rotate_row<true>(g + offset, rope + rope_position(p, row) * dim, rotated, dim);
    bwd_row(x + offset, static_cast<const A*>(rotated), w, rstd[row], dx + offset, dw, dim);
  });
}

template <typename T>
void bwd_bwd(const RmsNormParams& p) {
  using A = Accum<T>;
  const int64_t dim = p.dim;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* g = static_cast<const T*>(p.grad_out);
  const T* u = static_cast<const T*>(p.grad_grad_x);
  const T* v = static_cast<const T*>(p.grad_grad_weight);
  const A* rstd = static_cast<const A*>(p.rstd);
  T* dg = static_cast<T*>(p.grad_grad_out);
  T* dx = static_cast<T*>(p.grad_x);
  const A* rope = static_cast<const A*>(p.rope);
  rows_with_weight_grad<T>(p, [&](int64_t row, A* dw) {
    const int64_t offset = row * dim;
    const T* u_row = u == nullptr ? nullptr : u + offset;
    if (rope == nullptr) {
      bwd_bwd_row(x + offset, g + offset, w, rstd[row], u_row, v, dg + offset, dx + offset, dw, dim);
      return;
    }
    const A* cs = rope + rope_position(p, row) * dim;
    A* rotated = row_buffer<A>(dim, 0);  // R^T grad_out
    A* dg_rotated = row_buffer<A>(dim, 1);  // R^T grad_grad_out
    rotate_row<true>(g + offset, cs, rotated, dim);
    bwd_bwd_row(x + offset, static_cast<const A*>(rotated), w, rstd[row], u_row, v, dg_rotated, dx + offset, dw,
                dim);
    rotate_row<false>(static_cast<const A*>(dg_rotated), cs, rotated, dim);
    T* __restrict__ dg_row = dg + offset;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) dg_row[i] = narrow<T>(rotated[i]);
  });
}

}  // namespace

void rms_norm_fwd(const RmsNormParams& params) {
  if (params.rows == 0 || params.dim == 0) return;
  dispatch_dtype<c10::BFloat16, c10::Half>(params.dtype, "rms_norm_fwd",
                                           [&](auto tag) { fwd<decltype(tag)>(params); });
}

void rms_norm_bwd(const RmsNormParams& params) {
  if (params.dim == 0) return;
  dispatch_dtype<c10::BFloat16, c10::Half>(params.dtype, "rms_norm_bwd",
                                           [&](auto tag) { bwd<decltype(tag)>(params); });
}

void rms_norm_bwd_bwd(const RmsNormParams& params) {
  if (params.dim == 0) return;
  dispatch_dtype<c10::BFloat16, c10::Half>(params.dtype, "rms_norm_bwd_bwd",
                                           [&](auto tag) { bwd_bwd<decltype(tag)>(params); });
}

}  // namespace ttt::cpu
