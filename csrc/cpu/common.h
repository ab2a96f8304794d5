// Helpers shared by the CPU kernels (csrc/cpu/*.cpp).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ttt_kernels/dtype.h"

namespace ttt::cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn(T{}) with T float or double for a float32 / float64 dtype; kernels computing in their tensors' dtype
// take no other (the glue widens 16-bit inputs first).
template <typename Fn>
void dispatch_float(DType dtype, const char* kernel, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(float{});
    case DType::kFloat64:
      return fn(double{});
    case DType::kBFloat16:
    case DType::kFloat16:
      break;
  }
  throw std::invalid_argument(std::string("ttt::cpu::") + kernel +
                              ": tensors must be float32 or float64 (16-bit inputs are widened by the caller), got "
                              "dtype enum value " +
                              std::to_string(static_cast<int>(dtype)));
}

}  // namespace ttt::cpu
