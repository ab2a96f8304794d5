// The thread team of the CPU kernels (libttt_kernels_cpu.so, which needs no torch library).
//
// The kernels split their work with ttt::cpu::parallel_for(begin, end, grain, fn): fn(lo, hi) over disjoint
// subranges covering [begin, end), each (but the last) at least `grain` long; with fewer than 2 * grain items, or
// one thread, fn(begin, end) runs on the calling thread. Which threads run them is the backend's choice:
// - by default OpenMP's (as many threads as omp_get_max_threads(); none is forked inside a parallel region);
// - inside torch (libttt_kernels.so installs it when it is loaded) torch's at::parallel_for and at::get_num_threads,
//   so torch.set_num_threads and torch's inter-op rules apply.
// A program may install its own thread pool with set_parallel_backend (before calling kernels from several threads).
#pragma once

#include <cstdint>
#include <functional>

namespace ttt::cpu {

using RangeFn = std::function<void(int64_t lo, int64_t hi)>;

struct ParallelBackend {
  void (*parallel_for)(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn) = nullptr;
  int (*num_threads)() = nullptr;  // threads parallel_for may use
};

void set_parallel_backend(const ParallelBackend& backend);
void parallel_for(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn);
int num_threads();

}  // namespace ttt::cpu
