// The CUTLASS GEMM instantiations behind ttt::TTT_CUDA_NS::mlp_gemm (csrc/cuda/gemm.cu), one function per kernel.
// Defined in csrc/cuda/gemm_cutlass.cuh and instantiated for bfloat16 and float16 in gemm_bf16.cu and
// gemm_fp16.cu (one small translation unit per element type keeps each compiler run short), in both builds (nvcc and
// the simulator's). This header names no CUTLASS type, so the wrapper that includes it compiles in seconds.
#pragma once

#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/gemm.h"

namespace ttt::TTT_CUDA_NS::mlp_cutlass {

// Each runs one GEMM of an already checked GemmParams (check_mlp_gemm) on `stream` and throws std::runtime_error
// naming the kernel when CUTLASS rejects the problem or the launch fails. Element: __nv_bfloat16 or __half.

// kSwiglu, A row-major, B column-major.
template <typename Element>
void swiglu_rc(const GemmParams& params, void* stream);

// kStore, A row-major, B column-major (kBRowMajor false) or row-major (true).
template <typename Element, bool kBRowMajor>
void store_r(const GemmParams& params, void* stream);

// kAccumulate, A column-major, B row-major.
template <typename Element>
void accumulate_cr(const GemmParams& params, void* stream);

}  // namespace ttt::TTT_CUDA_NS::mlp_cutlass
