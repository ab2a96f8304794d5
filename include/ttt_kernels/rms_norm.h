// Fused RMSNorm over the last dimension of a contiguous [rows, dim] tensor:
//   out  = [residual +] weight * x * rstd,   rstd = 1 / sqrt(mean(x^2) + eps)     (one rstd per row)
//   grad_x      = rstd * (grad_out * weight) - x * rstd^3 * mean(grad_out * weight * x)
//   grad_weight = sum over rows of grad_out * x * rstd
// and its double backward (the vector-Jacobian product of the backward, for gradients of gradients), with
// u = grad_grad_x and v = grad_grad_weight the cotangents of grad_x and grad_weight (either may be absent: zero),
// g = grad_out, r = rstd, per row:
//   a = g w, s = sum(a x), t = sum(u x), q = sum(u a), p = sum(v g x), c = r^3 / dim, h = r u - c t x
//   grad_grad_out = w h + r v x
//   grad_x        = (3 c r^2 s t / dim - c (q + p)) x - c t a - c s u + r v g      (r's dependence on x included)
//   grad_weight   = sum over rows of g h
// The optional residual fuses a post-norm residual connection (x_next = residual + norm(x)) into the forward; the
// backward does not change (residual's gradient is grad_out itself).
// The optional rope fuses rotary position embeddings (QK-norm then RoPE): out = R(norm(x)), R rotating each pair
// (2i, 2i + 1) of a row by the angle of the row's position: (a, b) -> (a cos - b sin, a sin + b cos). R is linear
// and orthogonal, so the backward and double backward above run on g = R^T grad_out, and the double backward's
// grad_grad_out is R applied to the formula's.
// Math runs in float32 (float64 for float64 tensors); out/grad_x/grad_weight are stored in the input dtype.
//
// Torch-free: the kernels (csrc/cpu/rms_norm.cpp, csrc/cuda/rms_norm.cu) see only this header; csrc/ops/rms_norm.cpp
// fills the params from tensors.
#pragma once

#include <cstdint>

#include "ttt_kernels/dtype.h"

namespace ttt {

struct RmsNormParams {
  // Inputs: x and grad_out [rows, dim], weight [dim], all contiguous.
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* grad_out = nullptr;  // backward only
  const void* residual = nullptr;  // forward only: [rows, dim], added to out in float32 (float64); nullptr: none
  // [rows] float32 (float64 when dtype is kFloat64): written by the forward, read by the backward.
  void* rstd = nullptr;
  // Outputs: out and grad_x [rows, dim], grad_weight [dim], contiguous.
  void* out = nullptr;          // forward only
  void* grad_x = nullptr;       // backward only
  void* grad_weight = nullptr;  // backward only
  // Double backward only: the cotangents u [rows, dim] and v [dim] (nullptr: zero) and grad_grad_out [rows, dim];
  // grad_x and grad_weight then receive the double backward's (see above).
  const void* grad_grad_x = nullptr;
  const void* grad_grad_weight = nullptr;
  void* grad_grad_out = nullptr;
  // CUDA backward and double backward: rms_norm_bwd_workspace_bytes(params) bytes of scratch holding one float32
  // (float64 for kFloat64) partial sum [dim] of grad_weight per thread block, reduced in a fixed order
  // (deterministic, no atomics).
  void* workspace = nullptr;
  // Rotary position embeddings (all three directions; nullptr: none): [rope_positions, dim / 2, 2] (cos, sin) in the
  // math dtype (float32, float64 for kFloat64), contiguous; row r is at position (r / rope_heads) % rope_positions
  // (x [..., positions, heads, dim]). dim is even. Not combined with residual.
  const void* rope = nullptr;
  int64_t rope_heads = 1;
  int64_t rope_positions = 0;
  int64_t rows = 0;
  int64_t dim = 0;
  double eps = 0.0;  // forward only
  DType dtype = DType::kFloat32;  // of x, weight, grad_out, out, grad_x and grad_weight
};

// CPU kernels (at::parallel_for over rows). grad_weight is reduced over a thread-count-independent split of the
// rows, so results are bitwise reproducible for any number of threads.
namespace cpu {
void rms_norm_fwd(const RmsNormParams& params);
void rms_norm_bwd(const RmsNormParams& params);
void rms_norm_bwd_bwd(const RmsNormParams& params);
}  // namespace cpu

// CUDA kernels and their launchers, compiled by nvcc (ttt::cuda: `stream` is a cudaStream_t) and for the CUDA
// simulator (ttt::cuda_sim: `stream` is ignored). They throw std::runtime_error on a launch failure, and
// rms_norm_bwd and rms_norm_bwd_bwd on a dim above 40960 (20480 for float64), whose grad_weight accumulators would
// not fit in a block's shared memory. rms_norm_bwd_workspace_bytes gives the bytes of the workspace that
// rms_norm_bwd and rms_norm_bwd_bwd need (> 0); it depends on rows, dim and dtype only.
namespace cuda {
void rms_norm_fwd(const RmsNormParams& params, void* stream);
int64_t rms_norm_bwd_workspace_bytes(const RmsNormParams& params);
void rms_norm_bwd(const RmsNormParams& params, void* stream);
void rms_norm_bwd_bwd(const RmsNormParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void rms_norm_fwd(const RmsNormParams& params, void* stream);
int64_t rms_norm_bwd_workspace_bytes(const RmsNormParams& params);
void rms_norm_bwd(const RmsNormParams& params, void* stream);
void rms_norm_bwd_bwd(const RmsNormParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
