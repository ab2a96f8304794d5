// Inside torch the CPU kernels (libttt_kernels_cpu.so, torch-free) run on torch's thread team: loading
// libttt_kernels.so installs at::parallel_for as their backend (include/ttt_kernels/cpu_parallel.h), so that
// torch.set_num_threads, its grain rules and its nested-parallelism rules apply to them as to torch's own ops.
#include <ATen/Parallel.h>

#include "ttt_kernels/cpu_parallel.h"

namespace ttt {
namespace {

void torch_parallel_for(int64_t begin, int64_t end, int64_t grain, const cpu::RangeFn& fn) {
  at::parallel_for(begin, end, grain, fn);
}

int torch_num_threads() { return at::get_num_threads(); }

const bool installed = [] {
  cpu::set_parallel_backend({&torch_parallel_for, &torch_num_threads});
  return true;
}();

}  // namespace
}  // namespace ttt
