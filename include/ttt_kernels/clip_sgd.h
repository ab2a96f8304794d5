// The clipped SGD step of TTT-E2E's fast weights over a list of tensors (docs/mlp.md): one global L2 norm of all
// gradients (per sequence for batched fast weights), optax.clip_by_global_norm's scale, and the update.
//
// Torch-free: the kernels (csrc/cpu/clip_sgd.cpp, csrc/cuda/clip_sgd.cu) see only this header;
// csrc/ops/clip_sgd.cpp fills the params from tensors.
#pragma once

#include <cstdint>

#include "ttt_kernels/dtype.h"

namespace ttt {

// One (weight, grad) pair: out = weight - lr * scale * grad, elementwise over numel contiguous elements. out may be
// weight (the in-place update). With ClipSgdParams::batch = B the numel elements are B equal slices, one per
// sequence (a tensor [B, ...]).
struct ClipTensor {
  const void* weight = nullptr;
  const void* grad = nullptr;
  void* out = nullptr;
  int64_t numel = 0;
};

// Per sequence s (one sequence unless batch > 1): norm[s] = sqrt(sum over all grads of their slice s squared) (one
// global L2 norm per sequence), scale = 1 if norm < max_norm else max_norm / norm (optax.clip_by_global_norm: zero
// gradients give norm 0 < max_norm, scale 1; NaN gradients give a NaN norm and NaN outputs), then every slice s of
// out = weight - lr * scale * grad. Squares are summed in float64 in a fixed order (bitwise reproducible); scale and
// the update are computed in the tensors' dtype.
struct ClipSgdParams {
  const ClipTensor* tensors = nullptr;  // host array of `count` pairs
  int64_t count = 0;
  int64_t batch = 1;              // sequences: every numel is a multiple of it
  DType dtype = DType::kFloat32;  // of every weight, grad and out: float32 or float64
  double lr = 0.0;
  double max_norm = 0.0;  // > 0
  void* norm = nullptr;   // [batch] dtype, written
  // CUDA only: clip_sgd_workspace_bytes(params) bytes of scratch (partial sums and the step, device memory).
  void* workspace = nullptr;
};

// CPU kernel (at::parallel_for over chunks; vectorized): float32 and float64.
namespace cpu {
void clip_sgd_update(const ClipSgdParams& params);
}  // namespace cpu

// CUDA kernels and their launcher, compiled by nvcc (ttt::cuda: `stream` is a cudaStream_t) and for the CUDA
// simulator (ttt::cuda_sim). clip_sgd_update throws std::runtime_error on a launch failure and
// std::invalid_argument on arguments it cannot handle (the message names the argument and what was expected).
//
//   clip_sgd_update: float32 or float64; needs clip_sgd_workspace_bytes(params) bytes of device scratch.
namespace cuda {
int64_t clip_sgd_workspace_bytes(const ClipSgdParams& params);
void clip_sgd_update(const ClipSgdParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
int64_t clip_sgd_workspace_bytes(const ClipSgdParams& params);
void clip_sgd_update(const ClipSgdParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
