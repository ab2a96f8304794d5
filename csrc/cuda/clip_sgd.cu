// Hand-written CUDA kernels of the clipped SGD step (math and params: include/ttt_kernels/clip_sgd.h); they also run
// in the simulator.
//
// clip_sgd_update: three launches. clip_norm_kernel: grid (kClipBlocks, tensors of the launch, sequences); block
// (b, t, s) sums grad^2 over the elements b * blockDim + i + k * kClipBlocks * blockDim of sequence s's slice of
// tensor t in float64 and writes one partial. clip_scale_kernel: block s sums sequence s's partials in a fixed
// order, writes its norm and its step lr * scale. clip_update_kernel: same grid as the norm, out = weight - step[s]
// * grad. Launches of kClipMaxTensors tensors (the tensor table is a kernel argument). No atomics: the norms are
// bitwise reproducible.
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/clip_sgd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
// Blocks per tensor of the clip kernels, and tensors per launch.
constexpr int kClipBlocks = 64;
constexpr int kClipMaxTensors = 16;

// The tensors of one launch: a kernel argument (kClipMaxTensors * 32 bytes). Sequence s's partials of tensor t (in
// the op's list) start at (s * count + t) * kClipBlocks.
struct ClipBatch {
  ClipTensor tensors[kClipMaxTensors];
  int64_t first;  // index of tensors[0] in the op's list
  int64_t count;  // tensors in the op's list
  int64_t batch;  // sequences: each tensor's numel is batch slices of numel / batch elements
};

// Sequence blockIdx.z's slice of tensor blockIdx.y of the launch: its first element and its length.
struct ClipSlice {
  int64_t offset;
  int64_t numel;
};
__device__ __forceinline__ ClipSlice clip_slice(const ClipTensor& t, int64_t batch) {
  const int64_t per_seq = t.numel / batch;
  return {static_cast<int64_t>(blockIdx.z) * per_seq, per_seq};
}

// Sum over the block of v; every thread gets the same bits (xor butterfly, then the warp totals in a fixed order).
// scratch: [kThreads / kWarp]. Every thread of the block must call it.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kThreads / kWarp; ++w) total += scratch[w];
  return total;
}

// partials[(s * count + first + t) * kClipBlocks + b] = sum of grad^2 over the elements of sequence s's slice of
// tensor t that block (b, t, s) owns.
template <typename T>
__global__ void __launch_bounds__(kThreads) clip_norm_kernel(const ClipBatch batch, double* partials) {
  __shared__ double scratch[kThreads / kWarp];
  const ClipTensor& t = batch.tensors[blockIdx.y];
  const ClipSlice slice = clip_slice(t, batch.batch);
  const T* __restrict__ g = static_cast<const T*>(t.grad) + slice.offset;
  double sum = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < slice.numel;
       i += int64_t{kClipBlocks} * kThreads) {
    const double v = static_cast<double>(g[i]);
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) {
    partials[(blockIdx.z * batch.count + batch.first + blockIdx.y) * kClipBlocks + blockIdx.x] = sum;
  }
}

// Block s: norm[s] = sqrt(sum of sequence s's `per_seq` partials); scale = 1 if norm < max_norm else max_norm / norm
// (in T); step[s] = lr * scale.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    clip_scale_kernel(const double* partials, int64_t per_seq, T* norm_out, T* step, double lr, double max_norm) {
  __shared__ double scratch[kThreads / kWarp];
  const double* seq_partials = partials + blockIdx.x * per_seq;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < per_seq; i += kThreads) sum += seq_partials[i];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) {
    const T norm = static_cast<T>(sqrt(sum));
    const T limit = static_cast<T>(max_norm);
    const T scale = norm < limit ? T(1) : limit / norm;
    norm_out[blockIdx.x] = norm;
    step[blockIdx.x] = static_cast<T>(lr) * scale;
  }
}

// out = weight - step[s] * grad over the elements block (b, t, s) owns (as in clip_norm_kernel).
template <typename T>
__global__ void __launch_bounds__(kThreads) clip_update_kernel(const ClipBatch batch, const T* steps) {
  const ClipTensor& t = batch.tensors[blockIdx.y];
  const ClipSlice slice = clip_slice(t, batch.batch);
  const T step = steps[blockIdx.z];
  const T* g = static_cast<const T*>(t.grad) + slice.offset;
  const T* w = static_cast<const T*>(t.weight) + slice.offset;
  T* out = static_cast<T*>(t.out) + slice.offset;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < slice.numel;
       i += int64_t{kClipBlocks} * kThreads) {
    out[i] = w[i] - step * g[i];
  }
}

}  // namespace

int64_t clip_sgd_workspace_bytes(const ClipSgdParams& p) {
  // The partials, then one float64 slot per sequence for its step.
  return p.batch * (p.count * kClipBlocks + 1) * static_cast<int64_t>(sizeof(double));
}

void clip_sgd_update(const ClipSgdParams& p, void* stream) {
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    if (p.batch < 1 || p.batch > 65535) {
      throw std::invalid_argument("clip_sgd_update: batch must be in [1, 65535], got " + std::to_string(p.batch));
    }
    double* partials = static_cast<double*>(p.workspace);
    T* step = reinterpret_cast<T*>(partials + p.batch * p.count * kClipBlocks);
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1) {
        launch(clip_scale_kernel<T>, dim3(static_cast<unsigned>(p.batch)), dim3(kThreads), 0, stream,
               static_cast<const double*>(partials), p.count * kClipBlocks, static_cast<T*>(p.norm), step, p.lr,
               p.max_norm);
      }
      for (int64_t first = 0; first < p.count; first += kClipMaxTensors) {
        ClipBatch batch{};
        batch.first = first;
        batch.count = p.count;
        batch.batch = p.batch;
        const int64_t n = std::min<int64_t>(kClipMaxTensors, p.count - first);
        for (int64_t i = 0; i < n; ++i) batch.tensors[i] = p.tensors[first + i];
        const dim3 grid(kClipBlocks, static_cast<unsigned>(n), static_cast<unsigned>(p.batch));
        if (pass == 0) {
          launch(clip_norm_kernel<T>, grid, dim3(kThreads), 0, stream, batch, partials);
        } else {
          launch(clip_update_kernel<T>, grid, dim3(kThreads), 0, stream, batch, static_cast<const T*>(step));
        }
      }
    }
  };
  if (p.dtype == DType::kFloat32) return run(float{});
  if (p.dtype == DType::kFloat64) return run(double{});
  throw std::invalid_argument("clip_sgd_update: weights and grads must be float32 or float64");
}

}  // namespace ttt::TTT_CUDA_NS
