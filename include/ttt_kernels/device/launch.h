// ttt::launch(kernel, grid, block, smem_bytes, stream, args...): launches a __global__ function on the GPU (nvcc)
// or in the CUDA simulator (TTT_SIM), and throws std::runtime_error naming the kernel and the launch shape when the
// launch is invalid or, in the simulator, when the kernel fails a check (divergent barrier, warp collective with
// missing lanes, shared memory out of bounds, ...). GPU kernel faults surface asynchronously, as usual in CUDA.
//
//   ttt::launch(my_kernel<T>, dim3(blocks), dim3(128), smem_bytes, stream, params);
//
// `stream` is a cudaStream_t under nvcc (nullptr: the legacy default stream) and ignored by the simulator, which
// runs the whole grid before returning. Dynamic shared memory above 48 KiB is opted into automatically.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "ttt_kernels/device/runtime.h"

namespace ttt {
namespace detail {
inline std::string launch_shape(dim3 grid, dim3 block, std::size_t smem_bytes) {
  const auto xyz = [](dim3 d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
  };
  return "grid " + xyz(grid) + ", block " + xyz(block) + ", " + std::to_string(smem_bytes) +
         " bytes of dynamic shared memory";
}
}  // namespace detail

#if defined(__CUDACC__)

template <class... Params, class... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem_bytes, void* stream,
                   Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "ttt::launch: wrong number of kernel arguments");
  const auto fail = [&](const char* step, cudaError_t err) {
    const char* name = nullptr;
    if (cudaFuncGetName(&name, reinterpret_cast<const void*>(kernel)) != cudaSuccess || name == nullptr) {
      name = "<unknown kernel>";
    }
    throw std::runtime_error(std::string("ttt::launch(") + name + ", " + detail::launch_shape(grid, block, smem_bytes) +
                             "): " + step + ": " + cudaGetErrorString(err));
  };
  if (smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    if (err != cudaSuccess) fail("cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)", err);
  }
  kernel<<<grid, block, smem_bytes, static_cast<cudaStream_t>(stream)>>>(std::forward<Args>(args)...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail("kernel launch", err);
}

#else

template <class... Params, class... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem_bytes, void* /*stream*/,
                   Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "ttt::launch: wrong number of kernel arguments");
  // The arguments are converted to the parameter types once; every simulated thread gets its own copy, as every
  // CUDA thread gets its own parameter registers.
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  const Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  const sim::detail::KernelLaunch k{
      reinterpret_cast<const void*>(kernel), grid, block, smem_bytes,
      [](const void* ctx) {
        const Call& c = *static_cast<const Call*>(ctx);
        std::apply(c.kernel, c.params);
      },
      &call, sizeof call};
  sim::detail::launch(k);
}

#endif

}  // namespace ttt
