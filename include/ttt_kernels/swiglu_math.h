// Element-wise math of the SwiGLU gate a = silu(h1) * h3 and of its first and second derivatives, shared by the CPU
// kernels (csrc/cpu/swiglu.cpp), the CUDA kernels (csrc/cuda/swiglu.cu) and the CUTLASS epilogue
// (csrc/cuda/gemm_cutlass.cuh), so that every backend evaluates the same formulas. Torch-free, host and device.
//
// Every function takes the sigmoid s = sigmoid(h1) precomputed: each backend computes it with its own exp (vectorized
// polynomial on the CPU, __expf on the GPU). With silu(z) = z s:
//   silu'(z)  = s (1 + z (1 - s))
//   silu''(z) = s (1 - s) (2 + z (1 - 2 s))
// All three stay finite for every finite z (s -> 0 or 1 for large |z|), so no formula produces NaN from a finite h1.
#pragma once

#if defined(__CUDACC__)
#define TTT_SWIGLU_HD __host__ __device__ __forceinline__
#else
#define TTT_SWIGLU_HD inline
#endif

namespace ttt::swiglu_math {

template <typename A>
TTT_SWIGLU_HD A silu(A z, A s) {
  return z * s;
}

template <typename A>
TTT_SWIGLU_HD A silu_grad(A z, A s) {
  return s * (A(1) + z * (A(1) - s));
}

template <typename A>
TTT_SWIGLU_HD A silu_grad2(A z, A s) {
  return s * (A(1) - s) * (A(2) + z * (A(1) - A(2) * s));
}

// Backward of a = silu(h1) h3 for one element, given da = dL/da and an extra gradient (e1, e3) that flows into
// (h1, h3) directly (zero when the pre-activations have no other use):
//   dh1 = da h3 silu'(h1) + e1,  dh3 = da silu(h1) + e3,  and a itself (recomputed for dL/dW2 = dy^T a).
template <typename A>
struct GateGrad {
  A dh1, dh3, a;
};

template <typename A>
TTT_SWIGLU_HD GateGrad<A> gate_bwd(A h1, A h3, A s, A da, A e1, A e3) {
  const A g = silu(h1, s);
  return {da * h3 * silu_grad(h1, s) + e1, da * g + e3, g * h3};
}

// Vector-Jacobian product of gate_bwd's (dh1, dh3, a) with respect to (h1, h3, da), for cotangents (c1, c3, ca) of
// (dh1, dh3, a); the cotangent of (e1, e3) is (c1, c3) itself and is not computed here:
//   cot_da = c1 h3 silu'(h1) + c3 silu(h1)
//   cot_h1 = c1 da h3 silu''(h1) + c3 da silu'(h1) + ca h3 silu'(h1)
//   cot_h3 = c1 da silu'(h1) + ca silu(h1)
template <typename A>
struct GateGradGrad {
  A cot_h1, cot_h3, cot_da;
};

template <typename A>
TTT_SWIGLU_HD GateGradGrad<A> gate_bwd_bwd(A h1, A h3, A s, A da, A c1, A c3, A ca) {
  const A g = silu(h1, s);
  const A dg = silu_grad(h1, s);
  const A ddg = silu_grad2(h1, s);
  return {h3 * (c1 * da * ddg + ca * dg) + c3 * da * dg, c1 * da * dg + ca * g, c1 * h3 * dg + c3 * g};
}

}  // namespace ttt::swiglu_math
