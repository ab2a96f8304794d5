// The "CUDA language" header every kernel .cu includes first. Under nvcc it is CUDA itself; for the simulator build
// (host compiler with -DTTT_SIM) it is the simulator's implementation of the same surface (sim/runtime.h,
// docs/simulator.md). Either way a kernel source also gets:
//
//   TTT_CUDA_NS           the namespace everything in a .cu file lives in, ttt::TTT_CUDA_NS: `cuda` under nvcc,
//                         `cuda_sim` in the simulator build, so both copies of a kernel link into one library;
//   ttt::dynamic_smem<T>() the block's dynamic shared memory (the smem_bytes of ttt::launch) as a T*, 128-byte
//                         aligned. Use it instead of `extern __shared__` arrays, which the simulator cannot provide.
#pragma once

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define TTT_CUDA_NS cuda

namespace ttt {
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char ttt_dynamic_smem_bytes[];
  return reinterpret_cast<T*>(ttt_dynamic_smem_bytes);
}
}  // namespace ttt

#elif defined(TTT_SIM)

#include "ttt_kernels/sim/runtime.h"

#define TTT_CUDA_NS cuda_sim

namespace ttt {
// Poisoned with 0xFF bytes at block start and surrounded by redzones checked at every barrier (docs/simulator.md).
template <class T>
inline T* dynamic_smem() {
  return reinterpret_cast<T*>(sim::detail::dynamic_smem);
}
}  // namespace ttt

#else
#error "ttt_kernels/device/runtime.h is for kernel sources: compile with nvcc, or with -DTTT_SIM for the simulator"
#endif
