// The GEMMs of the dynamic SwiGLU MLP and of its fused SGD update (docs/mlp.md): the CUTLASS wrapper of the CUDA
// path (GemmParams, one entry point for every epilogue), the AVX-512 float32 GEMM of the CPU path (SgemmParams) and
// the packing of weights into 16-bit GEMM operands (PackRowsParams).
//
// Torch-free: the kernels (csrc/cpu/gemm.cpp, csrc/cuda/gemm*.cu) see only this header; the torch glue
// (csrc/ops/gemm_glue.h, used by csrc/ops/gemm.cpp and csrc/ops/swiglu.cpp) fills the params from tensors.
#pragma once

#include <cstdint>

#include "ttt_kernels/dtype.h"

namespace ttt {

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

// CPU kernels:
//   sgemm (csrc/cpu/gemm.cpp): AVX-512; sgemm_available() is false (and sgemm throws) in builds without AVX-512.
//   use_sgemm(flops): whether the glue takes it over BLAS for a float32 GEMM of that many flops (per batch entry):
//   yes when available, the CPU is not an Intel one (MKL runs AVX2 code elsewhere) and the GEMM is large enough to
//   repay packing all of B (below that BLAS's small-matrix paths win: the suffix chunks' GEMMs); the environment
//   variable TTT_KERNELS_CPU_GEMM=native / blas forces either.
namespace cpu {
bool sgemm_available();
bool use_sgemm(double flops);
void sgemm(const SgemmParams& params);
}  // namespace cpu

// CUDA kernels and their launchers, compiled by nvcc (ttt::cuda: `stream` is a cudaStream_t) and for the CUDA
// simulator (ttt::cuda_sim). They throw std::runtime_error on a launch failure and std::invalid_argument on
// arguments they cannot handle (the message names the argument and what was expected).
//
//   pack_rows:       the 16-bit GEMM copies of the weights (PackRowsParams).
//   check_mlp_gemm:  the argument checks of mlp_gemm (std::invalid_argument).
//   mlp_gemm:        the one entry point of every CUTLASS GEMM (csrc/cuda/gemm.cu). bfloat16 / float16 operands,
//                    16-byte aligned bases, contiguous extents and leading dimensions multiples of 16 bytes;
//                    m, n, k in [1, 2^31). Supported layouts (A, B): kSwiglu (row, column); kStore (row, column) and
//                    (row, row); kAccumulate (column, row). The simulator build runs the same CUTLASS kernels.
namespace cuda {
void pack_rows(const PackRowsParams& params, void* stream);
void check_mlp_gemm(const GemmParams& params);
void mlp_gemm(const GemmParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void pack_rows(const PackRowsParams& params, void* stream);
void check_mlp_gemm(const GemmParams& params);
void mlp_gemm(const GemmParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
