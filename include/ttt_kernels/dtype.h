// Element types of the tensors an op's params struct points to. Torch-free, shared by the CPU kernels, the CUDA
// kernels and the torch glue (which maps at::ScalarType to it).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ttt {

enum class DType : int32_t { kFloat32, kFloat64, kBFloat16, kFloat16 };

// Bytes of one element of the statistics and accumulators of tensors of `dtype`: float64 for float64, float32
// otherwise. Workspace queries (`*_workspace_bytes`) count in bytes.
inline int64_t accum_bytes(DType dtype) { return dtype == DType::kFloat64 ? 8 : 4; }

// Calls fn(T{}) with the element type of `dtype`: float, double, or the backend's 16-bit types BFloat16 / Float16
// (c10's on the CPU, cuda_bf16.h's / cuda_fp16.h's in CUDA code). A value outside the enum throws, naming `kernel`.
template <typename BFloat16, typename Float16, typename Fn>
void dispatch_dtype(DType dtype, const char* kernel, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(float{});
    case DType::kFloat64:
      return fn(double{});
    case DType::kBFloat16:
      return fn(BFloat16{});
    case DType::kFloat16:
      return fn(Float16{});
  }
  throw std::invalid_argument(std::string(kernel) + ": unsupported dtype enum value " +
                              std::to_string(static_cast<int>(dtype)));
}

}  // namespace ttt
