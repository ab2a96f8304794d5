// The dynamic (fast-weight) SwiGLU MLP of TTT-E2E and its clipped SGD step (docs/mlp.md).
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
// Torch-free: the kernels (csrc/cpu/mlp.cpp, csrc/cuda/mlp*.cu) see only this header; csrc/ops/mlp.cpp fills the
// params from tensors.
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

// Backward of the gate (mlp_math::gate_bwd): (h, da, grad_h) -> (dh, a).
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

// Double backward of the gate (mlp_math::gate_bwd_bwd), plus the recomputed backward outputs the composed
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

// ---- clipped SGD over a list of tensors -------------------------------------------------------------------------

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

// ---- the GEMM wrapper (CUTLASS on the GPU) ------------------------------------------------------------------------

enum class GemmLayout : int32_t { kRowMajor, kColumnMajor };

enum class GemmEpilogue : int32_t {
  // D [m, n] (dtype) = A B.
  kStore,
  // n even; columns (2j, 2j + 1) of A B are (h1, h3) of gate j: D [m, n] (dtype) = A B (the pre-activations, in the
  // interleaved h layout) and T [m, n / 2] (dtype) = silu(h1) * h3, both from the float32 accumulators.
  kSwiglu,
  // D [m, n] (float32) = beta C + alpha (*scale) A B, with *scale read on the device (1 when scale is nullptr) and C
  // read only when beta != 0. C may be D: with alpha = -1, beta = 1 and scale = the SGD step s this is the fused
  // weight update W <- W - s A B.
  kAccumulate,
};

// A [m, k] times B [k, n] in dtype (bfloat16 or float16) with float32 accumulation. Operands are 2-D views with unit
// stride along one dimension: row-major element (i, j) at ptr[i * ld + j], column-major at ptr[j * ld + i]. A
// batched GEMM (GemmParams::batch > 1) finds the operand of problem z at ptr + z * batch_stride (elements).
struct GemmOperand {
  const void* ptr = nullptr;
  int64_t ld = 0;
  GemmLayout layout = GemmLayout::kRowMajor;
  int64_t batch_stride = 0;
};

// `batch` independent problems of one shape in one launch (the fast weights of B sequences): problem z reads and
// writes each operand at its pointer + z * its batch stride (elements).
struct GemmParams {
  GemmEpilogue epilogue = GemmEpilogue::kStore;
  DType dtype = DType::kBFloat16;  // of A and B, and of D and T except for kAccumulate
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  int64_t batch = 1;
  GemmOperand a;  // [m, k]
  GemmOperand b;  // [k, n]
  void* d = nullptr;  // [m, n] row-major
  int64_t ldd = 0;
  int64_t batch_stride_d = 0;
  const void* c = nullptr;  // kAccumulate: [m, n] float32 row-major
  int64_t ldc = 0;
  int64_t batch_stride_c = 0;
  void* t = nullptr;  // kSwiglu: [m, n / 2] dtype row-major
  int64_t ldt = 0;
  int64_t batch_stride_t = 0;
  float alpha = 1.0f;            // kAccumulate
  float beta = 0.0f;             // kAccumulate
  const float* scale = nullptr;  // kAccumulate: device pointer, or nullptr
};

// float32 GEMM of the CPU path: C [m, n] = alpha A B + beta C, element (i, j) of A at a[i * a_rs + j * a_cs] (B
// likewise; either may be transposed), C row-major with leading dimension ldc; beta == 0: C is not read. A batch of
// `batch` such GEMMs finds entry z's operands at a + z * a_bs, b + z * b_bs, c + z * c_bs.
struct SgemmParams {
  int64_t batch = 1;
  int64_t a_bs = 0;
  int64_t b_bs = 0;
  int64_t c_bs = 0;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;
  int64_t a_rs = 0;
  int64_t a_cs = 0;
  const float* b = nullptr;
  int64_t b_rs = 0;
  int64_t b_cs = 0;
  float beta = 0.0f;
  float* c = nullptr;
  int64_t ldc = 0;
};

// CPU kernels (at::parallel_for over rows / chunks; vectorized): float32 and float64 tensors only (the torch glue
// widens 16-bit tensors to float32 first).
//   sgemm (csrc/cpu/mlp_gemm.cpp): AVX-512; sgemm_available() is false (and sgemm throws) in builds without
//   AVX-512. use_sgemm(flops): whether the glue takes it over BLAS for a float32 GEMM of that many flops (per batch
//   entry): yes when available, the CPU is not an Intel one (MKL runs AVX2 code elsewhere) and the GEMM is large
//   enough to repay packing all of B (below that BLAS's small-matrix paths win: the suffix chunks' GEMMs); the
//   environment variable TTT_KERNELS_CPU_GEMM=native / blas forces either.
namespace cpu {
bool sgemm_available();
bool use_sgemm(double flops);
void sgemm(const SgemmParams& params);
void swiglu_fwd(const SwigluFwdParams& params);
void swiglu_bwd(const SwigluBwdParams& params);
void swiglu_bwd_bwd(const SwigluBwdBwdParams& params);
void clip_sgd_update(const ClipSgdParams& params);
}  // namespace cpu

// CUDA kernels and their launchers, compiled by nvcc (ttt::cuda: `stream` is a cudaStream_t) and for the CUDA
// simulator (ttt::cuda_sim). They throw std::runtime_error on a launch failure and std::invalid_argument on
// arguments they cannot handle (the message names the argument and what was expected).
//
//   pack_rows:       the 16-bit GEMM copies of the weights (PackRowsParams).
//   swiglu_bwd:      bfloat16 or float16 tensors (the CUDA MLP's dtype; float32 math), width a multiple of 4,
//                    h and grad_h 16-byte aligned, da, dh and a 8-byte aligned.
//   swiglu_bwd_bwd:  any dtype.
//   clip_sgd_update: float32 or float64; needs clip_sgd_workspace_bytes(params) bytes of device scratch.
//   check_mlp_gemm:  the argument checks of mlp_gemm (std::invalid_argument).
//   mlp_gemm:        the one entry point of every CUTLASS GEMM (csrc/cuda/mlp_gemm.cu). bfloat16 / float16 operands,
//                    16-byte aligned bases, contiguous extents and leading dimensions multiples of 16 bytes;
//                    m, n, k in [1, 2^31). Supported layouts (A, B): kSwiglu (row, column); kStore (row, column) and
//                    (row, row); kAccumulate (column, row). In the simulator build it runs a plain host loop over
//                    the same math instead (CUTLASS kernels do not run in the simulator), so the glue's operand
//                    mapping and the epilogues' math are testable on the CPU.

// dst [batch, groups * src_rows, cols] (bfloat16 or float16) from the rows of `groups` sources [batch, src_rows,
// cols] of one float dtype, per batch entry: interleaved, dst row r = src[r % groups] row r / groups; stacked, dst row
// r = src[r / src_rows] row r % src_rows.
struct PackRowsParams {
  const void* src[2] = {nullptr, nullptr};  // [batch, src_rows, cols] each, contiguous
  DType src_dtype = DType::kFloat32;
  int64_t batch = 1;
  int64_t src_rows = 0;
  int64_t cols = 0;
  int groups = 1;           // number of sources: 1 or 2
  bool interleave = false;  // row-interleave the sources (true) or stack them (false)
  void* dst = nullptr;      // [batch, groups * src_rows, cols], contiguous
  DType dst_dtype = DType::kBFloat16;
};

namespace cuda {
void pack_rows(const PackRowsParams& params, void* stream);
void swiglu_bwd(const SwigluBwdParams& params, void* stream);
void swiglu_bwd_bwd(const SwigluBwdBwdParams& params, void* stream);
int64_t clip_sgd_workspace_bytes(const ClipSgdParams& params);
void clip_sgd_update(const ClipSgdParams& params, void* stream);
void check_mlp_gemm(const GemmParams& params);
void mlp_gemm(const GemmParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void pack_rows(const PackRowsParams& params, void* stream);
void swiglu_bwd(const SwigluBwdParams& params, void* stream);
void swiglu_bwd_bwd(const SwigluBwdBwdParams& params, void* stream);
int64_t clip_sgd_workspace_bytes(const ClipSgdParams& params);
void clip_sgd_update(const ClipSgdParams& params, void* stream);
void check_mlp_gemm(const GemmParams& params);
void mlp_gemm(const GemmParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
