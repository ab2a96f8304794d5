// The launch shape and element conversions shared by the hand-written element-wise kernels of the SwiGLU MLP
// (csrc/cuda/swiglu.cu) and of its GEMMs' operand packing (csrc/cuda/gemm.cu: pack_rows). Included by .cu files only
// (the .cuh suffix keeps it out of CMake's csrc/cuda/*.cu glob); like them it is compiled by nvcc and, under TTT_SIM,
// by the host compiler.
#pragma once

#include "ttt_kernels/device/runtime.h"

#include <cstdint>

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kThreads = 256;
// Grid-stride kernels launch at most this many blocks (enough to fill an H100 several times over).
constexpr int64_t kMaxBlocks = 4096;

// Element conversions; the math type Acc is float for 16- and 32-bit elements, double for double.
template <typename T>
struct Num {
  using Acc = float;
  __device__ __forceinline__ static float load(T v) { return static_cast<float>(v); }
  __device__ __forceinline__ static T store(float v) { return static_cast<T>(v); }
};
template <>
struct Num<double> {
  using Acc = double;
  __device__ __forceinline__ static double load(double v) { return v; }
  __device__ __forceinline__ static double store(double v) { return v; }
};
template <>
struct Num<__nv_bfloat16> {
  using Acc = float;
  __device__ __forceinline__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Num<__half> {
  using Acc = float;
  __device__ __forceinline__ static float load(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half store(float v) { return __float2half_rn(v); }
};

}  // namespace
}  // namespace ttt::TTT_CUDA_NS
