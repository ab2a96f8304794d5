// Hand-written CUDA kernels of the dynamic SwiGLU MLP's gate (math, params and layouts: include/ttt_kernels/swiglu.h,
// include/ttt_kernels/swiglu_math.h). The GEMMs around them are CUTLASS kernels behind one wrapper
// (csrc/cuda/gemm.cu); everything here also runs in the simulator.
//
// - swiglu_bwd: (h, da[, grad_h]) -> (dh, a), 4 gates per thread (16-byte loads of h), grid-stride over
//   rows x gates. The CUDA MLP's width is a multiple of 8 and its buffers are fresh allocations.
// - swiglu_bwd_bwd: the gate's double backward, one gate per thread, any dtype.
// Loops over compile-time trip counts are fully unrolled by nvcc without `#pragma unroll`.
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/swiglu.h"
#include "ttt_kernels/swiglu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "elementwise.cuh"

namespace ttt::TTT_CUDA_NS {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + __expf(-z)); }
__device__ __forceinline__ double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

// kN consecutive elements moved by one access (16 bytes at most).
template <typename T, int kN>
struct alignas(sizeof(T) * kN < 16 ? sizeof(T) * kN : 16) Pack {
  T v[kN];
};

// ---- swiglu_bwd ---------------------------------------------------------------------------------------------------

// Gates [n, j .. j + kVec) for every vector index v = n * (width / kVec) + j / kVec of the grid-stride loop:
// dh[n, 0, j..] = dh1, dh[n, 1, j..] = dh3, a[n, j..] = a (swiglu_math::gate_bwd).
template <typename T, int kVec, bool kExtra>
__global__ void __launch_bounds__(kThreads) swiglu_bwd_kernel(const SwigluBwdParams p) {
  using Pair = Pack<T, 2 * kVec>;
  using Vec = Pack<T, kVec>;
  const int64_t per_row = p.width / kVec;
  const int64_t total = p.rows * per_row;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = v / per_row;
    const int64_t j = (v % per_row) * kVec;
    const Pair hv = *reinterpret_cast<const Pair*>(static_cast<const T*>(p.h) + 2 * (n * p.width + j));
    const Vec dav = *reinterpret_cast<const Vec*>(static_cast<const T*>(p.da) + n * p.width + j);
    Pair ev = {};
    if (kExtra) ev = *reinterpret_cast<const Pair*>(static_cast<const T*>(p.grad_h) + 2 * (n * p.width + j));
    Vec dh1, dh3, a;
    for (int k = 0; k < kVec; ++k) {
      const float z = Num<T>::load(hv.v[2 * k]);
      const float u = Num<T>::load(hv.v[2 * k + 1]);
      const float e1 = kExtra ? Num<T>::load(ev.v[2 * k]) : 0.0f;
      const float e3 = kExtra ? Num<T>::load(ev.v[2 * k + 1]) : 0.0f;
      const swiglu_math::GateGrad<float> r = swiglu_math::gate_bwd(z, u, sigmoid(z), Num<T>::load(dav.v[k]), e1, e3);
      dh1.v[k] = Num<T>::store(r.dh1);
      dh3.v[k] = Num<T>::store(r.dh3);
      a.v[k] = Num<T>::store(r.a);
    }
    T* dh = static_cast<T*>(p.dh) + 2 * n * p.width + j;
    *reinterpret_cast<Vec*>(dh) = dh1;
    *reinterpret_cast<Vec*>(dh + p.width) = dh3;
    *reinterpret_cast<Vec*>(static_cast<T*>(p.a) + n * p.width + j) = a;
  }
}

// ---- swiglu_bwd_bwd -----------------------------------------------------------------------------------------------

// One gate (n, j) per index of the grid-stride loop (swiglu_math::gate_bwd and gate_bwd_bwd).
template <typename T, bool kExtra>
__global__ void __launch_bounds__(kThreads) swiglu_bwd_bwd_kernel(const SwigluBwdBwdParams p) {
  using A = typename Num<T>::Acc;
  const int64_t total = p.rows * p.width;
  const T* __restrict__ h = static_cast<const T*>(p.h);
  const T* __restrict__ e = static_cast<const T*>(p.grad_h);
  const T* __restrict__ cot_dh = static_cast<const T*>(p.cot_dh);
  T* __restrict__ cot_h = static_cast<T*>(p.cot_h);
  T* __restrict__ dh = static_cast<T*>(p.dh);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / p.width;
    const int64_t split = i + n * p.width;  // offset of dh1[n, j] = 2 n width + j in the [rows, 2, width] layout
    const A z = Num<T>::load(h[2 * i]);
    const A u = Num<T>::load(h[2 * i + 1]);
    const A s = sigmoid(z);
    const A da = Num<T>::load(static_cast<const T*>(p.da)[i]);
    const swiglu_math::GateGrad<A> g = swiglu_math::gate_bwd(z, u, s, da, kExtra ? Num<T>::load(e[2 * i]) : A(0),
                                                             kExtra ? Num<T>::load(e[2 * i + 1]) : A(0));
    const swiglu_math::GateGradGrad<A> gg =
        swiglu_math::gate_bwd_bwd(z, u, s, da, Num<T>::load(cot_dh[split]), Num<T>::load(cot_dh[split + p.width]),
                                  Num<T>::load(static_cast<const T*>(p.cot_a)[i]));
    cot_h[2 * i] = Num<T>::store(gg.cot_h1);
    cot_h[2 * i + 1] = Num<T>::store(gg.cot_h3);
    static_cast<T*>(p.cot_da)[i] = Num<T>::store(gg.cot_da);
    dh[split] = Num<T>::store(g.dh1);
    dh[split + p.width] = Num<T>::store(g.dh3);
    static_cast<T*>(p.a)[i] = Num<T>::store(g.a);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

// Blocks of a grid-stride launch over `items` work items.
dim3 grid_for(int64_t items) {
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(ceil_div(items, kThreads), 1, kMaxBlocks)));
}

template <typename T>
void launch_bwd(const SwigluBwdParams& p, void* stream) {
  constexpr int kVec = 4;  // 4 gates per thread: 16-byte loads of h, 8-byte accesses of da, dh and a
  if (p.width % kVec != 0 || !aligned(p.h, 16) || (p.grad_h != nullptr && !aligned(p.grad_h, 16)) ||
      !aligned(p.da, 8) || !aligned(p.dh, 8) || !aligned(p.a, 8)) {
    throw std::invalid_argument("swiglu_bwd: the width (" + std::to_string(p.width) +
                                ") must be a multiple of 4 and h, grad_h 16-byte, da, dh, a 8-byte aligned");
  }
  launch(p.grad_h ? swiglu_bwd_kernel<T, kVec, true> : swiglu_bwd_kernel<T, kVec, false>,
         grid_for(p.rows * (p.width / kVec)), dim3(kThreads), 0, stream, p);
}

}  // namespace

void swiglu_bwd(const SwigluBwdParams& p, void* stream) {
  if (p.rows == 0 || p.width == 0) return;
  if (p.dtype == DType::kBFloat16) return launch_bwd<__nv_bfloat16>(p, stream);
  if (p.dtype == DType::kFloat16) return launch_bwd<__half>(p, stream);
  throw std::invalid_argument("swiglu_bwd: the CUDA kernel takes bfloat16 or float16 tensors");
}

void swiglu_bwd_bwd(const SwigluBwdBwdParams& p, void* stream) {
  if (p.rows == 0 || p.width == 0) return;
  dispatch_dtype<__nv_bfloat16, __half>(p.dtype, "swiglu_bwd_bwd", [&](auto tag) {
    using T = decltype(tag);
    launch(p.grad_h ? swiglu_bwd_bwd_kernel<T, true> : swiglu_bwd_bwd_kernel<T, false>, grid_for(p.rows * p.width),
           dim3(kThreads), 0, stream, p);
  });
}

}  // namespace ttt::TTT_CUDA_NS
