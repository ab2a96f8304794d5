// CPU kernel of the clipped SGD step (math and params: include/ttt_kernels/clip_sgd.h).
//
// The update sums squares per fixed chunk of every tensor in float64 and adds the chunk sums in order: the norm does
// not depend on the thread count. Each chunk is one `omp simd` loop (parallel_for over chunks).
#include "ttt_kernels/clip_sgd.h"


#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "ttt_kernels/cpu_parallel.h"

namespace ttt::cpu {
namespace {

// Elements per chunk of the clipped update (the unit of parallelism and of the norm's partial sums), and the chunks
// below which it runs on the calling thread (forking a thread team costs more than summing 256K squares, and a team
// waits for its slowest thread when another process shares the cores).
constexpr int64_t kClipChunk = 1 << 15;
constexpr int64_t kClipParallelChunks = 8;

// Elements of one sequence's slice of one tensor, [begin, end).
struct Chunk {
  int64_t tensor;
  int64_t seq;
  int64_t begin;
  int64_t end;
};

template <typename A>
double sum_squares(const A* __restrict__ g, int64_t n) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return sum;
}

template <typename A>
void axpy(const A* __restrict__ w, const A* __restrict__ g, A* __restrict__ out, A step, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] - step * g[i];
}

// In-place (out == weight) needs the same element order for reads and writes, which axpy has; restrict would be a
// lie for aliasing pointers, so that case uses this copy of the loop.
template <typename A>
void axpy_inplace(A* __restrict__ w, const A* __restrict__ g, A step, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] -= step * g[i];
}

template <typename A>
void clip_sgd(const ClipSgdParams& p) {
  // Chunks ordered by sequence, then tensor, then position: each sequence's partial sums are added in that order.
  std::vector<Chunk> chunks;
  std::vector<int64_t> first_chunk(p.batch + 1, 0);  // chunks of sequence s: [first_chunk[s], first_chunk[s + 1])
  for (int64_t s = 0; s < p.batch; ++s) {
    for (int64_t t = 0; t < p.count; ++t) {
      const int64_t per_seq = p.tensors[t].numel / p.batch;
      for (int64_t b = 0; b < per_seq; b += kClipChunk) {
        chunks.push_back({t, s, s * per_seq + b, s * per_seq + std::min(per_seq, b + kClipChunk)});
      }
    }
    first_chunk[s + 1] = static_cast<int64_t>(chunks.size());
  }
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
  // Below kClipParallelChunks chunks the whole update runs on the calling thread.
  const int64_t grain = kClipParallelChunks;
  std::vector<double> partial(chunks.size());
  parallel_for(0, num_chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Chunk& k = chunks[c];
      partial[c] = sum_squares(static_cast<const A*>(p.tensors[k.tensor].grad) + k.begin, k.end - k.begin);
    }
  });
  std::vector<A> steps(p.batch);
  const A max_norm = static_cast<A>(p.max_norm);
  for (int64_t s = 0; s < p.batch; ++s) {
    double total = 0;
    for (int64_t c = first_chunk[s]; c < first_chunk[s + 1]; ++c) total += partial[c];
    const A norm = static_cast<A>(std::sqrt(total));
    const A scale = norm < max_norm ? A(1) : max_norm / norm;
    steps[s] = static_cast<A>(p.lr) * scale;
    static_cast<A*>(p.norm)[s] = norm;
  }

  parallel_for(0, num_chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Chunk& k = chunks[c];
      const ClipTensor& t = p.tensors[k.tensor];
      const A* g = static_cast<const A*>(t.grad) + k.begin;
      A* out = static_cast<A*>(t.out) + k.begin;
      if (t.out == t.weight) {
        axpy_inplace(out, g, steps[k.seq], k.end - k.begin);
      } else {
        axpy(static_cast<const A*>(t.weight) + k.begin, g, out, steps[k.seq], k.end - k.begin);
      }
    }
  });
}

}  // namespace

void clip_sgd_update(const ClipSgdParams& params) {
  dispatch_float(params.dtype, "clip_sgd_update", [&](auto tag) { clip_sgd<decltype(tag)>(params); });
}

}  // namespace ttt::cpu
