// Element types of the tensors an op's params struct points to. Torch-free, shared by the CPU kernels, the CUDA
// kernels and the torch glue (which maps at::ScalarType to it).
#pragma once

#include <cstdint>

namespace ttt {

enum class DType : int32_t { kFloat32, kFloat64, kBFloat16, kFloat16 };

}  // namespace ttt
