// The dynamic (fast-weight) SwiGLU MLP of TTT-E2E (docs/mlp.md).
//
//   h1 = x w1^T, h3 = x w3^T   [rows, m]      (w1, w3: [m, d]; x: [rows, d])
//   a  = silu(h1) * h3         [rows, m]
//   y  = a w2^T                [rows, d]      (w2: [d, m])
//
// Layouts shared by every backend (rows N, width m):
//   h  [N, m, 2]  the pre-activations, interleaved: h[n, j, 0] = h1[n, j], h[n, j, 1] = h3[n, j]. This is what the
//                 CUDA up-projection writes when it computes h1 and h3 in one GEMM against the row-interleaved
//                 weight [w1[0]; w3[0]; w1[1]; ...] (the gate's two inputs then sit in one thread's accumulators).
//   dh [N, 2, m]  the gradient of (h1, h3): dh[n, 0, :] = dL/dh1[n, :], dh[n, 1, :] = dL/dh3[n, :]. Both halves
//                 are then plain GEMM operands (unit stride, leading dimension 2m), and dh viewed as [N, 2m] times
//                 [w1; w3] ([2m, d]) is dx in one GEMM.
//
// This header declares the element-wise gate kernels; the GEMMs around them are in include/ttt_kernels/gemm.h.
// Torch-free: the kernels (csrc/cpu/swiglu.cpp, csrc/cuda/swiglu.cu) see only these headers; csrc/ops/swiglu.cpp
// fills the params from tensors.
#pragma once

#include <cstdint>

#include "ttt_kernels/dtype.h"

namespace ttt {

// ---- element-wise gate kernels ----------------------------------------------------------------------------------

// CPU forward of the gate: (h1, h3) from the two up-projection GEMMs -> h (interleaved, for the backward) and a.
struct SwigluFwdParams {
  const void* h1 = nullptr;  // [rows, width], contiguous
  const void* h3 = nullptr;  // [rows, width], contiguous
  void* h = nullptr;         // [rows, width, 2]
  void* a = nullptr;         // [rows, width]
  int64_t rows = 0;
  int64_t width = 0;
  DType dtype = DType::kFloat32;  // of every tensor
};

// Backward of the gate (swiglu_math::gate_bwd): (h, da, grad_h) -> (dh, a).
struct SwigluBwdParams {
  const void* h = nullptr;       // [rows, width, 2]
  const void* grad_h = nullptr;  // [rows, width, 2]: extra gradient of h, added to dh; nullptr: none
  const void* da = nullptr;      // [rows, width]
  void* dh = nullptr;            // [rows, 2, width]
  void* a = nullptr;             // [rows, width]
  int64_t rows = 0;
  int64_t width = 0;
  DType dtype = DType::kFloat32;  // of every tensor
};

// Double backward of the gate (swiglu_math::gate_bwd_bwd), plus the recomputed backward outputs the composed
// double backward of the MLP needs: (h, da, grad_h, cot_dh, cot_a) -> (cot_h, cot_da, dh, a). All tensors dtype.
struct SwigluBwdBwdParams {
  const void* h = nullptr;       // [rows, width, 2]
  const void* da = nullptr;      // [rows, width]
  const void* grad_h = nullptr;  // [rows, width, 2]; nullptr: none
  const void* cot_dh = nullptr;  // [rows, 2, width] cotangent of dh
  const void* cot_a = nullptr;   // [rows, width] cotangent of a
  void* cot_h = nullptr;         // [rows, width, 2]
  void* cot_da = nullptr;        // [rows, width]
  void* dh = nullptr;            // [rows, 2, width]
  void* a = nullptr;             // [rows, width]
  int64_t rows = 0;
  int64_t width = 0;
  DType dtype = DType::kFloat32;
};

// CPU kernels (at::parallel_for over rows; vectorized): float32 and float64 tensors only (the torch glue widens
// 16-bit tensors to float32 first).
namespace cpu {
void swiglu_fwd(const SwigluFwdParams& params);
void swiglu_bwd(const SwigluBwdParams& params);
void swiglu_bwd_bwd(const SwigluBwdBwdParams& params);
}  // namespace cpu

// CUDA kernels and their launchers, compiled by nvcc (ttt::cuda: `stream` is a cudaStream_t) and for the CUDA
// simulator (ttt::cuda_sim). They throw std::runtime_error on a launch failure and std::invalid_argument on
// arguments they cannot handle (the message names the argument and what was expected).
//
//   swiglu_bwd:      bfloat16 or float16 tensors (the CUDA MLP's dtype; float32 math), width a multiple of 4,
//                    h and grad_h 16-byte aligned, da, dh and a 8-byte aligned.
//   swiglu_bwd_bwd:  any dtype.
namespace cuda {
void swiglu_bwd(const SwigluBwdParams& params, void* stream);
void swiglu_bwd_bwd(const SwigluBwdBwdParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void swiglu_bwd(const SwigluBwdParams& params, void* stream);
void swiglu_bwd_bwd(const SwigluBwdBwdParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
