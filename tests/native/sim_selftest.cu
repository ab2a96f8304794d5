// Self-test kernels of the CUDA simulator: small kernels whose results (or failures) tests/test_sim.py checks under
// several schedules. include/ttt_kernels/sim_selftest.h lists them with their buffers and launch configurations.
// Some are wrong on purpose (a missing barrier, a divergent barrier, an off-by-one shared-memory index, collectives
// with missing lanes): the simulator must expose each of them.
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/arch.h"
#include "ttt_kernels/device/launch.h"
#include "sim_selftest.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace ttt::TTT_CUDA_NS {
namespace sim_selftest_kernels {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kTile = 32;     // transpose tile: 32 x 32 elements
constexpr int kTileRows = 8;  // rows of the tile per thread row: block (32, 8)

// out[blockIdx.x] = sum of the elements of `in` at blockIdx.x * blockDim.x + threadIdx.x + k * gridDim.x * blockDim.x:
// a butterfly over each warp, the warp sums through static shared memory, a tree over the first warp.
__global__ void block_reduce_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += in[i];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// out [cols, rows] = in [rows, cols]^T through a [32][33] tile of dynamic shared memory (the padding column keeps
// the column reads free of bank conflicts). Without kBarrier the reads race with the other threads' writes.
template <bool kBarrier>
__global__ void transpose_kernel(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
  float* tile = dynamic_smem<float>();
  int x = blockIdx.x * kTile + threadIdx.x;
  int y = blockIdx.y * kTile + threadIdx.y;
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < cols && y + j < rows) tile[(threadIdx.y + j) * (kTile + 1) + threadIdx.x] = in[(y + j) * cols + x];
  }
  if constexpr (kBarrier) __syncthreads();
  x = blockIdx.y * kTile + threadIdx.x;
  y = blockIdx.x * kTile + threadIdx.y;
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x * (kTile + 1) + threadIdx.y + j];
  }
}

// In block `block`, threads >= `first` return before the barrier the others wait at.
__global__ void divergent_barrier_kernel(int* out, int block, int first) {
  const int gid = blockIdx.x * blockDim.x + threadIdx.x;
  out[gid] = 0;
  if (static_cast<int>(blockIdx.x) == block && static_cast<int>(threadIdx.x) >= first) return;
  __syncthreads();
  out[gid] = 1;
}

// Dynamic shared memory of blockDim.x floats indexed one past the thread: kWrite writes smem[blockDim.x] (out of
// bounds), else the last thread reads it.
template <bool kWrite>
__global__ void smem_off_by_one_kernel(float* out) {
  float* s = dynamic_smem<float>();
  const int i = threadIdx.x;
  if constexpr (kWrite) {
    s[i + 1] = static_cast<float>(i);
  } else {
    s[i] = static_cast<float>(i);
  }
  __syncthreads();
  out[i] = kWrite ? s[i] : s[i + 1];
}

// With T = threads in the grid: counters = [T, sum of global ids, T - 1, -(T - 1), 2 T (CAS loop), 1 (atomicExch),
// 1 (threads that saw the atomicExch's initial 0), 3 T (unsigned)], fsum = [T, T / 2 (shared-memory partials)],
// dsum = [sum of global ids], hist[b] = threads whose global id is b mod 16 (shared-memory histogram).
// blockDim.x >= 16.
__global__ void atomics_kernel(int* counters, float* fsum, double* dsum, int* hist) {
  __shared__ int block_hist[16];
  __shared__ float block_fsum;
  const int tid = threadIdx.x;
  const int gid = blockIdx.x * blockDim.x + tid;
  if (tid < 16) block_hist[tid] = 0;
  if (tid == 0) block_fsum = 0.0f;
  __syncthreads();
  atomicAdd(&counters[0], 1);
  atomicAdd(&counters[1], gid);
  atomicMax(&counters[2], gid);
  atomicMin(&counters[3], -gid);
  int old = atomicAdd(&counters[4], 0);
  int assumed;
  do {
    assumed = old;
    old = atomicCAS(&counters[4], assumed, assumed + 2);
  } while (old != assumed);
  if (atomicExch(&counters[5], 1) == 0) atomicAdd(&counters[6], 1);
  atomicAdd(reinterpret_cast<unsigned*>(&counters[7]), 3u);
  atomicAdd(&fsum[0], 1.0f);
  atomicAdd(&dsum[0], static_cast<double>(gid));
  atomicAdd(&block_hist[gid % 16], 1);
  atomicAdd(&block_fsum, 0.5f);
  __syncthreads();
  if (tid < 16) atomicAdd(&hist[tid], block_hist[tid]);
  if (tid == 0) atomicAdd(&fsum[1], block_fsum);
}

// One result per case and thread, out[case * blockDim.x + tid], for a scalar model of the PTX semantics to check.
// v = 7 * tid + 3 is every lane's value. One block, blockDim.x a multiple of 32.
__global__ void warp_ops_kernel(int* out) {
  __shared__ int exchange[1024];
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int v = 7 * tid + 3;
  int r[kWarpOpsCases - 1];
  r[0] = __shfl_sync(kFullMask, v, 5 * lane + 3);  // source lanes beyond 31 wrap (srcLane % width)
  r[1] = __shfl_sync(kFullMask, v, 3 * lane + 1, 16);
  r[2] = __shfl_sync(kFullMask, v, 2, 8);
  r[3] = __shfl_sync(kFullMask, v, -1, 4);
  r[4] = __shfl_up_sync(kFullMask, v, 1);
  r[5] = __shfl_up_sync(kFullMask, v, 3, 8);
  r[6] = __shfl_up_sync(kFullMask, v, 0);
  r[7] = __shfl_down_sync(kFullMask, v, 1);
  r[8] = __shfl_down_sync(kFullMask, v, 5, 16);
  r[9] = __shfl_down_sync(kFullMask, v, 33);  // the offset's low 5 bits: 1
  r[10] = __shfl_xor_sync(kFullMask, v, 1);
  r[11] = __shfl_xor_sync(kFullMask, v, 16);
  r[12] = __shfl_xor_sync(kFullMask, v, 5, 8);
  r[13] = __shfl_xor_sync(kFullMask, v, 8, 4);  // earlier segments are readable, later ones give the own value
  r[14] = static_cast<int>(__ballot_sync(kFullMask, v % 3 == 0));
  r[15] = __all_sync(kFullMask, v > 0);
  r[16] = __all_sync(kFullMask, lane < 31);
  r[17] = __any_sync(kFullMask, lane == 7);
  r[18] = __any_sync(kFullMask, v < 0);
  r[19] = static_cast<int>(__activemask());
  r[20] = static_cast<int>(__reduce_add_sync(kFullMask, static_cast<unsigned>(lane)));
  r[21] = __reduce_max_sync(kFullMask, v % 11 - 5);
  r[22] = static_cast<int>(__reduce_min_sync(kFullMask, static_cast<unsigned>(v % 13)));
  // Two collectives of one warp in flight at once: the even and the odd lanes vote separately.
  if (lane % 2 == 0) {
    r[23] = static_cast<int>(__ballot_sync(0x55555555u, lane % 4 == 0));
  } else {
    r[23] = static_cast<int>(__ballot_sync(0xaaaaaaaau, lane % 3 == 0));
  }
  r[24] = __float_as_int(__shfl_xor_sync(kFullMask, 0.5f * static_cast<float>(v), 3));
  r[25] = static_cast<int>(4.0 * __shfl_down_sync(kFullMask, 0.25 * static_cast<double>(v), 2));
  exchange[tid] = v;
  __syncwarp();
  r[26] = exchange[tid ^ 1];
  for (int c = 0; c < kWarpOpsCases - 1; ++c) out[c * blockDim.x + tid] = r[c];
  // Last case: lanes >= 10 exit, and the others find only themselves active.
  int* last = out + (kWarpOpsCases - 1) * blockDim.x + tid;
  if (lane >= 10) {
    *last = -2;
    return;
  }
  *last = static_cast<int>(__activemask());
}

// A block whose last warp is partial: every warp's collectives name exactly its existing lanes.
// out[c * blockDim.x + tid] for c = xor-shuffle by 1 (width 16), shuffle from lane 5 (width 16), ballot, activemask.
__global__ void warp_partial_kernel(int* out) {
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int lanes = min(32, static_cast<int>(blockDim.x) - (tid - lane));
  const unsigned mask = lanes == 32 ? kFullMask : (1u << lanes) - 1u;
  const int v = 7 * tid + 3;
  const int n = blockDim.x;
  out[0 * n + tid] = __shfl_xor_sync(mask, v, 1, 16);
  out[1 * n + tid] = __shfl_sync(mask, v, 5, 16);
  out[2 * n + tid] = static_cast<int>(__ballot_sync(mask, v % 2 == 0));
  out[3 * n + tid] = static_cast<int>(__activemask());
}

// Warp collectives that cannot complete (see sim_selftest.h for the modes). Threads not involved just exit.
__global__ void collective_error_kernel(int* out, int mode) {
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  int v = tid;
  switch (mode) {
    case 0:  // lane 1 exits while lane 0 waits for it
      if (lane == 1) return;
      if (lane == 0) v = __shfl_sync(0x3u, v, 1);
      break;
    case 1:  // lanes 0 and 1 name each other in different collectives
      if (lane == 0) v = __shfl_sync(0x3u, v, 1);
      if (lane == 1) v = static_cast<int>(__ballot_sync(0x3u, 1));
      break;
    case 2:  // the full mask in a partial warp
      if (tid >= 32) v = __shfl_sync(kFullMask, v, 0);
      break;
    case 3:  // the calling lane is not in the mask
      if (lane == 0) v = __shfl_sync(0x2u, v, 1);
      break;
    case 4:  // half the warp shuffles with the full mask, the other half waits at the block barrier
      if (lane < 16) {
        v = __shfl_xor_sync(kFullMask, v, 1);
      } else {
        __syncthreads();
      }
      break;
    default:
      break;
  }
  out[tid] = v;
}

// Each thread copies 16 bytes of `in` into dynamic shared memory with cp.async, then (after a barrier) writes its
// neighbour's 16 bytes to `out`. mode 0 waits before the barrier; mode 1 only after reading (a race: a copy lands at
// its own thread's wait, so neighbours that read earlier see poisoned shared memory); mode 2 never waits (an error
// when the thread exits).
__global__ void cp_async_kernel(const float* __restrict__ in, float* __restrict__ out, int mode) {
  float* s = dynamic_smem<float>();
  const int tid = threadIdx.x;
  const int base = 4 * (blockIdx.x * blockDim.x + tid);
  arch::cp_async_ca<16>(s + 4 * tid, in + base);
  arch::cp_async_commit();
  if (mode == 0) arch::cp_async_wait<0>();
  __syncthreads();
  const int src = 4 * ((tid + 1) % static_cast<int>(blockDim.x));
  const int dst = 4 * (blockIdx.x * blockDim.x) + src;
  for (int k = 0; k < 4; ++k) out[dst + k] = s[src + k];
  if (mode == 1) arch::cp_async_wait<0>();
}

// For each i < n with xb, yb = x[i], y[i] rounded to bf16 (and xh, yh to fp16): bf[k * n + i] for k = 0..5 is xb,
// xb + yb, xb * yb, xb - yb, xb / yb and the high half of (xb, yb) * (xb, yb) as bf16 pairs; hf likewise in fp16.
template <class T, class T2>
__device__ void fp16_ops(const float* x, const float* y, T* out, int n, int i, T (*convert)(float),
                         T2 (*pair)(float, float)) {
  const T a = convert(x[i]);
  const T b = convert(y[i]);
  const T2 p = pair(x[i], y[i]);
  out[i] = a;
  out[n + i] = a + b;
  out[2 * n + i] = a * b;
  out[3 * n + i] = a - b;
  out[4 * n + i] = a / b;
  out[5 * n + i] = (p * p).y;
}

__device__ __nv_bfloat16 to_bf16(float f) { return __float2bfloat16_rn(f); }
__device__ __half to_f16(float f) { return __float2half_rn(f); }
__device__ __nv_bfloat162 to_bf16x2(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
__device__ __half2 to_f16x2(float lo, float hi) { return __floats2half2_rn(lo, hi); }

__global__ void fp16_ops_kernel(const float* x, const float* y, __nv_bfloat16* bf, __half* hf, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  fp16_ops(x, y, bf, n, i, &to_bf16, &to_bf16x2);
  fp16_ops(x, y, hf, n, i, &to_f16, &to_f16x2);
}

// 2 * iters barriers: every iteration each thread publishes v and averages it with its neighbour's,
// v = 0.5 * (v + v[(tid + 1) % blockDim.x]), starting from v = tid. Dynamic smem: blockDim.x floats.
__global__ void barrier_loop_kernel(float* out, int iters) {
  float* s = dynamic_smem<float>();
  const int tid = threadIdx.x;
  const int n = blockDim.x;
  float v = static_cast<float>(tid);
  for (int it = 0; it < iters; ++it) {
    s[tid] = v;
    __syncthreads();
    v = 0.5f * (v + s[(tid + 1) % n]);
    __syncthreads();
  }
  out[blockIdx.x * n + tid] = v;
}

// Row sums of in [rows, blockDim.x] (blockDim.x a multiple of 32) into out (every thread its row's sum) through a
// static per-warp scratch: warp shuffles, lane 0 stores its warp's sum, a barrier, every thread reads all the sums.
// kBarrier: a second barrier before the next row's stores (without it a warp that runs ahead overwrites sums the
// other warps are still reading: the race RMSNorm's row loop must avoid; the values stay right in every schedule
// the simulator may choose, so only the race detector sees it).
template <bool kBarrier>
__global__ void row_sums_kernel(const float* __restrict__ in, float* __restrict__ out, int rows) {
  __shared__ float scratch[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  for (int r = 0; r < rows; ++r) {
    float v = in[r * blockDim.x + threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    out[r * blockDim.x + threadIdx.x] = total;
    if constexpr (kBarrier) __syncthreads();
  }
}

// out[t] = sum over tiles k of tile_k[(4t + 5) mod T] for in = `tiles` tiles of T = 4 * blockDim.x floats: a
// two-stage cp.async pipeline through dynamic shared memory (smem 2T floats), each thread reading another thread's
// copy. kBarrier: the barrier after a stage's reads; without it the next prefetch into that stage overwrites what
// other threads are still reading.
template <bool kBarrier>
__global__ void pipeline_kernel(const float* __restrict__ in, float* __restrict__ out, int tiles) {
  float* stage = dynamic_smem<float>();
  const int tid = threadIdx.x;
  const int tile = 4 * static_cast<int>(blockDim.x);
  arch::cp_async_ca<16>(stage + 4 * tid, in + 4 * tid);
  arch::cp_async_commit();
  float acc = 0.0f;
  for (int k = 0; k < tiles; ++k) {
    if (k + 1 < tiles) arch::cp_async_ca<16>(stage + ((k + 1) % 2) * tile + 4 * tid, in + (k + 1) * tile + 4 * tid);
    arch::cp_async_commit();
    arch::cp_async_wait<1>();
    __syncthreads();
    acc += stage[(k % 2) * tile + (4 * tid + 5) % tile];
    if constexpr (kBarrier) __syncthreads();
  }
  arch::cp_async_wait<0>();
  out[tid] = acc;
}

// out[t] = what thread src(t) stored in dynamic shared memory (smem blockDim.x floats, blockDim.x a multiple of 32).
// mode 0: src is the next lane of t's warp, after a __syncwarp (ordered); 1: the same without the __syncwarp (a
// race); 2: src is in the next warp, after a __syncwarp (a race: a warp barrier orders only its own lanes).
__global__ void warp_handoff_kernel(float* out, int mode) {
  float* s = dynamic_smem<float>();
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  s[tid] = static_cast<float>(tid) + 0.5f;
  if (mode != 1) __syncwarp();
  const int src = mode == 2 ? (tid + 32) % static_cast<int>(blockDim.x) : tid - lane + (lane + 1) % 32;
  out[tid] = s[src];
}

// out[i] = 2 in[i] for i < blockDim.x. mode 1 stores to out[i + 1] (the last thread one element past the end),
// mode 2 loads in[i + 1] (the last thread reads past the end).
__global__ void global_oob_kernel(const float* __restrict__ in, float* __restrict__ out, int mode) {
  const int i = threadIdx.x;
  const float v = in[mode == 2 ? i + 1 : i];
  out[mode == 1 ? i + 1 : i] = 2.0f * v;
}

}  // namespace sim_selftest_kernels

namespace {

using namespace sim_selftest_kernels;

struct Launch {
  const char* kernel;
  const SimSelftestArgs& a;
  void* stream;

  dim3 grid() const { return dim3(a.grid[0], a.grid[1], a.grid[2]); }
  dim3 block() const { return dim3(a.block[0], a.block[1], a.block[2]); }
  size_t smem() const { return static_cast<size_t>(a.smem_bytes); }
  uint64_t threads() const {
    return uint64_t{a.grid[0]} * a.grid[1] * a.grid[2] * a.block[0] * a.block[1] * a.block[2];
  }
  int integer(int i) const { return static_cast<int>(a.ints[i]); }

  template <class T>
  T* buffer(int i, uint64_t min_elems) const {
    if (static_cast<uint64_t>(a.numels[i]) < min_elems) {
      throw std::invalid_argument(std::string("sim_selftest(") + kernel + "): buffer " + std::to_string(i) +
                                  " needs at least " + std::to_string(min_elems) + " elements, got " +
                                  std::to_string(a.numels[i]));
    }
    return static_cast<T*>(a.buffers[i]);
  }

  template <class... Params, class... Args>
  void operator()(void (*k)(Params...), Args&&... args) const {
    launch(k, grid(), block(), smem(), stream, std::forward<Args>(args)...);
  }
};

struct Entry {
  const char* name;
  const char* dtypes;  // one code per buffer
  int num_ints;
  void (*run)(const Launch& l);
};

constexpr Entry kEntries[] = {
    {"block_reduce", "ff", 0,
     [](const Launch& l) {
       const int n = static_cast<int>(l.a.numels[0]);
       l(block_reduce_kernel, l.buffer<const float>(0, 0), l.buffer<float>(1, l.a.grid[0]), n);
     }},
    {"transpose", "ff", 2,
     [](const Launch& l) {
       const uint64_t n = static_cast<uint64_t>(l.a.ints[0]) * static_cast<uint64_t>(l.a.ints[1]);
       l(transpose_kernel<true>, l.buffer<const float>(0, n), l.buffer<float>(1, n), l.integer(0), l.integer(1));
     }},
    {"transpose_no_barrier", "ff", 2,
     [](const Launch& l) {
       const uint64_t n = static_cast<uint64_t>(l.a.ints[0]) * static_cast<uint64_t>(l.a.ints[1]);
       l(transpose_kernel<false>, l.buffer<const float>(0, n), l.buffer<float>(1, n), l.integer(0), l.integer(1));
     }},
    {"divergent_barrier", "i", 2,
     [](const Launch& l) { l(divergent_barrier_kernel, l.buffer<int>(0, l.threads()), l.integer(0), l.integer(1)); }},
    {"smem_oob_write", "f", 0,
     [](const Launch& l) { l(smem_off_by_one_kernel<true>, l.buffer<float>(0, l.a.block[0])); }},
    {"smem_oob_read", "f", 0,
     [](const Launch& l) { l(smem_off_by_one_kernel<false>, l.buffer<float>(0, l.a.block[0])); }},
    {"atomics", "ifdi", 0,
     [](const Launch& l) {
       l(atomics_kernel, l.buffer<int>(0, 8), l.buffer<float>(1, 2), l.buffer<double>(2, 1), l.buffer<int>(3, 16));
     }},
    {"warp_ops", "i", 0,
     [](const Launch& l) { l(warp_ops_kernel, l.buffer<int>(0, uint64_t{kWarpOpsCases} * l.a.block[0])); }},
    {"warp_partial", "i", 0, [](const Launch& l) { l(warp_partial_kernel, l.buffer<int>(0, 4 * l.a.block[0])); }},
    {"collective_error", "i", 1,
     [](const Launch& l) { l(collective_error_kernel, l.buffer<int>(0, l.a.block[0]), l.integer(0)); }},
    {"cp_async", "ff", 1,
     [](const Launch& l) {
       l(cp_async_kernel, l.buffer<const float>(0, 4 * l.threads()), l.buffer<float>(1, 4 * l.threads()),
         l.integer(0));
     }},
    {"fp16_ops", "ffbh", 0,
     [](const Launch& l) {
       const uint64_t n = static_cast<uint64_t>(l.a.numels[0]);
       l(fp16_ops_kernel, l.buffer<const float>(0, 0), l.buffer<const float>(1, n), l.buffer<__nv_bfloat16>(2, 6 * n),
         l.buffer<__half>(3, 6 * n), static_cast<int>(n));
     }},
    {"barrier_loop", "f", 1,
     [](const Launch& l) {
       l(barrier_loop_kernel, l.buffer<float>(0, uint64_t{l.a.grid[0]} * l.a.block[0]), l.integer(0));
     }},
    {"row_sums", "ff", 2,
     [](const Launch& l) {
       const uint64_t n = uint64_t{l.a.block[0]} * static_cast<uint64_t>(l.a.ints[0]);
       if (l.integer(1) != 0) {
         l(row_sums_kernel<true>, l.buffer<const float>(0, n), l.buffer<float>(1, n), l.integer(0));
       } else {
         l(row_sums_kernel<false>, l.buffer<const float>(0, n), l.buffer<float>(1, n), l.integer(0));
       }
     }},
    {"pipeline", "ff", 2,
     [](const Launch& l) {
       const uint64_t n = 4 * uint64_t{l.a.block[0]} * static_cast<uint64_t>(l.a.ints[0]);
       if (l.integer(1) != 0) {
         l(pipeline_kernel<true>, l.buffer<const float>(0, n), l.buffer<float>(1, l.a.block[0]), l.integer(0));
       } else {
         l(pipeline_kernel<false>, l.buffer<const float>(0, n), l.buffer<float>(1, l.a.block[0]), l.integer(0));
       }
     }},
    {"warp_handoff", "f", 1,
     [](const Launch& l) { l(warp_handoff_kernel, l.buffer<float>(0, l.a.block[0]), l.integer(0)); }},
    {"global_oob", "ff", 1,
     [](const Launch& l) {
       l(global_oob_kernel, l.buffer<const float>(0, l.a.block[0]), l.buffer<float>(1, l.a.block[0]), l.integer(0));
     }},
};

}  // namespace

void sim_selftest(const char* kernel, const SimSelftestArgs& args, void* stream) {
  for (const Entry& e : kEntries) {
    if (std::strcmp(e.name, kernel) != 0) continue;
    const int expected_buffers = static_cast<int>(std::strlen(e.dtypes));
    if (args.num_buffers != expected_buffers || args.num_ints != e.num_ints) {
      throw std::invalid_argument(std::string("sim_selftest(") + kernel + "): expected " +
                                  std::to_string(expected_buffers) + " tensors and " + std::to_string(e.num_ints) +
                                  " kernel ints, got " + std::to_string(args.num_buffers) + " and " +
                                  std::to_string(args.num_ints));
    }
    for (int i = 0; i < expected_buffers; ++i) {
      if (args.dtypes[i] != e.dtypes[i]) {
        throw std::invalid_argument(std::string("sim_selftest(") + kernel + "): tensor " + std::to_string(i) +
                                    " must have dtype code '" + e.dtypes[i] + "', got '" + args.dtypes[i] +
                                    "' (f float32, d float64, i int32, h float16, b bfloat16)");
      }
    }
    e.run(Launch{kernel, args, stream});
    return;
  }
  std::string names;
  for (const Entry& e : kEntries) names += std::string(names.empty() ? "" : ", ") + e.name;
  throw std::invalid_argument(std::string("sim_selftest: unknown kernel \"") + kernel + "\"; expected one of " + names);
}

}  // namespace ttt::TTT_CUDA_NS
