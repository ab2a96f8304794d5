// CPU kernels of the dynamic SwiGLU MLP's element-wise parts (math, params and layouts: include/ttt_kernels/swiglu.h,
// include/ttt_kernels/swiglu_math.h). The GEMMs around them are the AVX-512 sgemm (csrc/cpu/gemm.cpp) or BLAS,
// called by the torch glue (csrc/ops/swiglu.cpp).
//
// Every kernel is one pass over its rows (parallel_for) with an `omp simd` inner loop over the row. The sigmoid
// uses a branch-free float exp (below) so those loops vectorize; float64 uses std::exp (tests only).
#include "ttt_kernels/swiglu.h"


#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "ttt_kernels/cpu_parallel.h"
#include "ttt_kernels/swiglu_math.h"

namespace ttt::cpu {
namespace {

// Elements per parallel_for grain of the row kernels (torch's own grain size: smaller tensors run on the calling
// thread).
constexpr int64_t kGrainElements = 1 << 15;

// exp(x) for float, branch-free so that it vectorizes (glibc's expf, std::floor and std::fmin do not, without
// -ffast-math): x = n ln2 + r with n = round(x / ln2) (adding and subtracting 1.5 * 2^23 rounds to an integer),
// |r| <= ln2 / 2 (Cody-Waite split of ln2 into an exact high part and a correction), e^r by a degree-7 polynomial
// with Cephes' minimax coefficients, 2^n by building the exponent bits. Maximum relative error 8.2e-8 over the range.
// x is clamped to [-87, 88], where 2^n stays a normal float: exp(-87) = 1.6e-38 instead of a subnormal or 0, which
// changes a sigmoid by < 1e-37.
inline float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

inline float sigmoid(float z) { return 1.0f / (1.0f + exp_f32(-z)); }
inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// The row kernels take restrict-qualified pointers so the compiler sees independent unit-stride (or stride-2 for the
// interleaved h) accesses and vectorizes every loop.

// a = silu(h1) h3 and h = interleave(h1, h3) for one row of `width` gates.
template <typename A>
void fwd_row(const A* __restrict__ h1, const A* __restrict__ h3, A* __restrict__ h, A* __restrict__ a,
             int64_t width) {
#pragma omp simd
  for (int64_t j = 0; j < width; ++j) {
    const A z = h1[j];
    const A u = h3[j];
    a[j] = swiglu_math::silu(z, sigmoid(z)) * u;
    h[2 * j] = z;
    h[2 * j + 1] = u;
  }
}

// (dh1, dh3, a) of one row from (h, da) and, when kExtra, the extra gradient e of h.
template <typename A, bool kExtra>
void bwd_row(const A* __restrict__ h, const A* __restrict__ e, const A* __restrict__ da, A* __restrict__ dh1,
             A* __restrict__ dh3, A* __restrict__ a, int64_t width) {
#pragma omp simd
  for (int64_t j = 0; j < width; ++j) {
    const A z = h[2 * j];
    const A u = h[2 * j + 1];
    const swiglu_math::GateGrad<A> r =
        swiglu_math::gate_bwd(z, u, sigmoid(z), da[j], kExtra ? e[2 * j] : A(0), kExtra ? e[2 * j + 1] : A(0));
    dh1[j] = r.dh1;
    dh3[j] = r.dh3;
    a[j] = r.a;
  }
}

template <typename A>
struct BwdBwdRow {
  const A* __restrict__ h;
  const A* __restrict__ da;
  const A* __restrict__ e;
  const A* __restrict__ c1;
  const A* __restrict__ c3;
  const A* __restrict__ ca;
  A* __restrict__ cot_h;
  A* __restrict__ cot_da;
  A* __restrict__ dh1;
  A* __restrict__ dh3;
  A* __restrict__ a;
};

template <typename A, bool kExtra>
void bwd_bwd_row(const BwdBwdRow<A> r, int64_t width) {
  const A* __restrict__ h = r.h;
  const A* __restrict__ da = r.da;
  const A* __restrict__ e = r.e;
  const A* __restrict__ c1 = r.c1;
  const A* __restrict__ c3 = r.c3;
  const A* __restrict__ ca = r.ca;
  A* __restrict__ cot_h = r.cot_h;
  A* __restrict__ cot_da = r.cot_da;
  A* __restrict__ dh1 = r.dh1;
  A* __restrict__ dh3 = r.dh3;
  A* __restrict__ a = r.a;
#pragma omp simd
  for (int64_t j = 0; j < width; ++j) {
    const A z = h[2 * j];
    const A u = h[2 * j + 1];
    const A s = sigmoid(z);
    const swiglu_math::GateGrad<A> g =
        swiglu_math::gate_bwd(z, u, s, da[j], kExtra ? e[2 * j] : A(0), kExtra ? e[2 * j + 1] : A(0));
    const swiglu_math::GateGradGrad<A> gg = swiglu_math::gate_bwd_bwd(z, u, s, da[j], c1[j], c3[j], ca[j]);
    cot_h[2 * j] = gg.cot_h1;
    cot_h[2 * j + 1] = gg.cot_h3;
    cot_da[j] = gg.cot_da;
    dh1[j] = g.dh1;
    dh3[j] = g.dh3;
    a[j] = g.a;
  }
}

int64_t row_grain(int64_t width) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(width, 1)); }

template <typename A>
void fwd(const SwigluFwdParams& p) {
  const int64_t m = p.width;
  const A* h1 = static_cast<const A*>(p.h1);
  const A* h3 = static_cast<const A*>(p.h3);
  A* h = static_cast<A*>(p.h);
  A* a = static_cast<A*>(p.a);
  parallel_for(0, p.rows, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) fwd_row(h1 + n * m, h3 + n * m, h + 2 * n * m, a + n * m, m);
  });
}

template <typename A>
void bwd(const SwigluBwdParams& p) {
  const int64_t m = p.width;
  const A* h = static_cast<const A*>(p.h);
  const A* e = static_cast<const A*>(p.grad_h);
  const A* da = static_cast<const A*>(p.da);
  A* dh = static_cast<A*>(p.dh);
  A* a = static_cast<A*>(p.a);
  parallel_for(0, p.rows, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t pair = 2 * n * m;  // offset of row n in h, grad_h and dh
      if (e != nullptr) {
        bwd_row<A, true>(h + pair, e + pair, da + n * m, dh + pair, dh + pair + m, a + n * m, m);
      } else {
        bwd_row<A, false>(h + pair, nullptr, da + n * m, dh + pair, dh + pair + m, a + n * m, m);
      }
    }
  });
}

template <typename A>
void bwd_bwd(const SwigluBwdBwdParams& p) {
  const int64_t m = p.width;
  parallel_for(0, p.rows, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t pair = 2 * n * m;
      const int64_t row = n * m;
      const A* e = static_cast<const A*>(p.grad_h);
      const A* cot_dh = static_cast<const A*>(p.cot_dh) + pair;
      A* dh = static_cast<A*>(p.dh) + pair;
      const BwdBwdRow<A> r{static_cast<const A*>(p.h) + pair,
                           static_cast<const A*>(p.da) + row,
                           e != nullptr ? e + pair : nullptr,
                           cot_dh,
                           cot_dh + m,
                           static_cast<const A*>(p.cot_a) + row,
                           static_cast<A*>(p.cot_h) + pair,
                           static_cast<A*>(p.cot_da) + row,
                           dh,
                           dh + m,
                           static_cast<A*>(p.a) + row};
      if (e != nullptr) {
        bwd_bwd_row<A, true>(r, m);
      } else {
        bwd_bwd_row<A, false>(r, m);
      }
    }
  });
}

}  // namespace

void swiglu_fwd(const SwigluFwdParams& params) {
  if (params.rows == 0 || params.width == 0) return;
  dispatch_float(params.dtype, "swiglu_fwd", [&](auto tag) { fwd<decltype(tag)>(params); });
}

void swiglu_bwd(const SwigluBwdParams& params) {
  if (params.rows == 0 || params.width == 0) return;
  dispatch_float(params.dtype, "swiglu_bwd", [&](auto tag) { bwd<decltype(tag)>(params); });
}

void swiglu_bwd_bwd(const SwigluBwdBwdParams& params) {
  if (params.rows == 0 || params.width == 0) return;
  dispatch_float(params.dtype, "swiglu_bwd_bwd", [&](auto tag) { bwd_bwd<decltype(tag)>(params); });
}

}  // namespace ttt::cpu
