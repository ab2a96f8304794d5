// The CPU kernels' thread team: OpenMP by default, torch's once libttt_kernels.so installs it
// (include/ttt_kernels/cpu_parallel.h).
#include <omp.h>

#include <algorithm>
#include <atomic>

#include "common.h"
#include "ttt_kernels/cpu_parallel.h"

namespace ttt::cpu {
namespace {

int openmp_threads() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

// Splits [begin, end) into one contiguous piece per thread (pieces of at least `grain` items), as at::parallel_for
// does: the split depends only on the sizes and the thread count.
void openmp_parallel_for(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn) {
  const int64_t items = end - begin;
  const int64_t pieces = std::min<int64_t>(openmp_threads(), ceil_div(items, std::max<int64_t>(grain, 1)));
  if (pieces <= 1) {
    if (items > 0) fn(begin, end);
    return;
  }
  const int64_t size = ceil_div(items, pieces);
#pragma omp parallel for num_threads(static_cast<int>(pieces)) schedule(static, 1)
  for (int64_t piece = 0; piece < pieces; ++piece) {
    const int64_t lo = begin + piece * size;
    if (lo < end) fn(lo, std::min(end, lo + size));
  }
}

std::atomic<void (*)(int64_t, int64_t, int64_t, const RangeFn&)> g_parallel_for{&openmp_parallel_for};
std::atomic<int (*)()> g_num_threads{&openmp_threads};

}  // namespace

void set_parallel_backend(const ParallelBackend& backend) {
  g_parallel_for.store(backend.parallel_for != nullptr ? backend.parallel_for : &openmp_parallel_for);
  g_num_threads.store(backend.num_threads != nullptr ? backend.num_threads : &openmp_threads);
}

void parallel_for(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn) {
  g_parallel_for.load(std::memory_order_relaxed)(begin, end, grain, fn);
}

int num_threads() { return g_num_threads.load(std::memory_order_relaxed)(); }

}  // namespace ttt::cpu
