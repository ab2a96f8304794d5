// The self-test ops' tensors as the global buffers of their simulated launches (sim::LaunchBuffers), named
// "args[i]": the simulator's bounds checks then cover the self-test kernels too.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "ttt_kernels/sim/config.h"

namespace ttt {

inline void declare_selftest_buffers(sim::LaunchBuffers& scope, at::TensorList args) {
  for (size_t i = 0; i < args.size(); ++i) {
    scope.add(sim::GlobalBuffer{"args[" + std::to_string(i) + "]", args[i].data_ptr(), args[i].nbytes()});
  }
}

}  // namespace ttt
