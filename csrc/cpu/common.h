// Helpers shared by the CPU kernels (csrc/cpu/*.cpp).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "ttt_kernels/dtype.h"

namespace ttt::cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn(T{}) with T float or double for a float32 / float64 dtype; kernels computing in their tensors' dtype
// take no other (the glue widens 16-bit inputs first).
template <typename Fn>
void dispatch_float(DType dtype, const char* kernel, Fn&& fn) {
  struct Widened16 {};  // bfloat16 / float16: the caller widens them
  dispatch_dtype<Widened16, Widened16>(dtype, kernel, [&](auto tag) {
    if constexpr (std::is_same_v<decltype(tag), Widened16>) {
      throw std::invalid_argument(std::string("ttt::cpu::") + kernel +
                                  ": tensors must be float32 or float64 (16-bit inputs are widened by the caller), "
                                  "got dtype enum value " +
                                  std::to_string(static_cast<int>(dtype)));
    } else {
      fn(tag);
    }
  });
}

}  // namespace ttt::cpu
