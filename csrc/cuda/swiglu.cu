// Hand-written CUDA kernels of the dynamic SwiGLU MLP and of the clipped SGD step (math, params and layouts:
// include/ttt_kernels/mlp.h, include/ttt_kernels/mlp_math.h). The GEMMs are CUTLASS kernels behind one wrapper
// (csrc/cuda/mlp_gemm.cu); everything here also runs in the simulator.
//
// - pack_rows: copies (and converts) weight rows into the 16-bit GEMM operands: [w1; w3] row-interleaved for the
//   up-projection, stacked for dx, w2 on its own. One block per destination row, threads across its columns.
// - swiglu_bwd: (h, da[, grad_h]) -> (dh, a), 4 gates per thread (16-byte loads of h), grid-stride over
//   rows x gates. The CUDA MLP's width is a multiple of 8 and its buffers are fresh allocations.
// - swiglu_bwd_bwd: the gate's double backward, one gate per thread, any dtype.
// - clip_sgd_update: three launches. clip_norm_kernel: grid (kClipBlocks, tensors of the launch, sequences); block
//   (b, t, s) sums grad^2 over the elements b * blockDim + i + k * kClipBlocks * blockDim of sequence s's slice of
//   tensor t in float64 and writes one partial. clip_scale_kernel: block s sums sequence s's partials in a fixed
//   order, writes its norm and its step lr * scale. clip_update_kernel: same grid as the norm, out = weight - step[s]
//   * grad. Launches of kClipMaxTensors tensors (the tensor table is a kernel argument). No atomics: the norms are
//   bitwise reproducible.
// Loops over compile-time trip counts are fully unrolled by nvcc without `#pragma unroll`.
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/swiglu.h"
#include "ttt_kernels/swiglu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
// Grid-stride kernels launch at most this many blocks (enough to fill an H100 several times over).
constexpr int64_t kMaxBlocks = 4096;
// Blocks per tensor of the clip kernels, and tensors per launch.
constexpr int kClipBlocks = 64;
constexpr int kClipMaxTensors = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// ---- element conversions ------------------------------------------------------------------------------------------

// Math type: float for 16- and 32-bit elements, double for double.
template <typename T>
struct Num {
  using Acc = float;
  __device__ __forceinline__ static float load(T v) { return static_cast<float>(v); }
  __device__ __forceinline__ static T store(float v) { return static_cast<T>(v); }
};
template <>
struct Num<double> {
  using Acc = double;
  __device__ __forceinline__ static double load(double v) { return v; }
  __device__ __forceinline__ static double store(double v) { return v; }
};
template <>
struct Num<__nv_bfloat16> {
  using Acc = float;
  __device__ __forceinline__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Num<__half> {
  using Acc = float;
  __device__ __forceinline__ static float load(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half store(float v) { return __float2half_rn(v); }
};

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + __expf(-z)); }
__device__ __forceinline__ double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

// kN consecutive elements moved by one access (16 bytes at most).
template <typename T, int kN>
struct alignas(sizeof(T) * kN < 16 ? sizeof(T) * kN : 16) Pack {
  T v[kN];
};

// ---- pack_rows ----------------------------------------------------------------------------------------------------

// dst[z, r, :] = convert(src[g][z, i, :]) for the destination rows z * groups * src_rows + r = blockIdx.x (+ k *
// gridDim.x), with (g, i) = (r % groups, r / groups) when interleaving, (r / src_rows, r % src_rows) when stacking.
template <typename Src, typename Dst>
__global__ void __launch_bounds__(kThreads) pack_rows_kernel(const PackRowsParams p) {
  const int64_t per_batch = p.groups * p.src_rows;
  for (int64_t row = blockIdx.x; row < p.batch * per_batch; row += gridDim.x) {
    const int64_t z = row / per_batch;
    const int64_t r = row % per_batch;
    const int64_t g = p.interleave ? r % p.groups : r / p.src_rows;
    const int64_t i = z * p.src_rows + (p.interleave ? r / p.groups : r % p.src_rows);
    // A select, not p.src[g]: indexing the parameter array with a runtime index would copy it to local memory.
    const Src* __restrict__ src = static_cast<const Src*>(g == 0 ? p.src[0] : p.src[1]) + i * p.cols;
    Dst* __restrict__ dst = static_cast<Dst*>(p.dst) + row * p.cols;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) dst[c] = Num<Dst>::store(Num<Src>::load(src[c]));
  }
}

// ---- swiglu_bwd ---------------------------------------------------------------------------------------------------

// Gates [n, j .. j + kVec) for every vector index v = n * (width / kVec) + j / kVec of the grid-stride loop:
// dh[n, 0, j..] = dh1, dh[n, 1, j..] = dh3, a[n, j..] = a (mlp_math::gate_bwd).
template <typename T, int kVec, bool kExtra>
__global__ void __launch_bounds__(kThreads) swiglu_bwd_kernel(const SwigluBwdParams p) {
  using Pair = Pack<T, 2 * kVec>;
  using Vec = Pack<T, kVec>;
  const int64_t per_row = p.width / kVec;
  const int64_t total = p.rows * per_row;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = v / per_row;
    const int64_t j = (v % per_row) * kVec;
    const Pair hv = *reinterpret_cast<const Pair*>(static_cast<const T*>(p.h) + 2 * (n * p.width + j));
    const Vec dav = *reinterpret_cast<const Vec*>(static_cast<const T*>(p.da) + n * p.width + j);
    Pair ev = {};
    if (kExtra) ev = *reinterpret_cast<const Pair*>(static_cast<const T*>(p.grad_h) + 2 * (n * p.width + j));
    Vec dh1, dh3, a;
    for (int k = 0; k < kVec; ++k) {
      const float z = Num<T>::load(hv.v[2 * k]);
      const float u = Num<T>::load(hv.v[2 * k + 1]);
      const float e1 = kExtra ? Num<T>::load(ev.v[2 * k]) : 0.0f;
      const float e3 = kExtra ? Num<T>::load(ev.v[2 * k + 1]) : 0.0f;
      const mlp_math::GateGrad<float> r = mlp_math::gate_bwd(z, u, sigmoid(z), Num<T>::load(dav.v[k]), e1, e3);
      dh1.v[k] = Num<T>::store(r.dh1);
      dh3.v[k] = Num<T>::store(r.dh3);
      a.v[k] = Num<T>::store(r.a);
    }
    T* dh = static_cast<T*>(p.dh) + 2 * n * p.width + j;
    *reinterpret_cast<Vec*>(dh) = dh1;
    *reinterpret_cast<Vec*>(dh + p.width) = dh3;
    *reinterpret_cast<Vec*>(static_cast<T*>(p.a) + n * p.width + j) = a;
  }
}

// ---- swiglu_bwd_bwd -----------------------------------------------------------------------------------------------

// One gate (n, j) per index of the grid-stride loop (mlp_math::gate_bwd and gate_bwd_bwd).
template <typename T, bool kExtra>
__global__ void __launch_bounds__(kThreads) swiglu_bwd_bwd_kernel(const SwigluBwdBwdParams p) {
  using A = typename Num<T>::Acc;
  const int64_t total = p.rows * p.width;
  const T* __restrict__ h = static_cast<const T*>(p.h);
  const T* __restrict__ e = static_cast<const T*>(p.grad_h);
  const T* __restrict__ cot_dh = static_cast<const T*>(p.cot_dh);
  T* __restrict__ cot_h = static_cast<T*>(p.cot_h);
  T* __restrict__ dh = static_cast<T*>(p.dh);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / p.width;
    const int64_t split = i + n * p.width;  // offset of dh1[n, j] = 2 n width + j in the [rows, 2, width] layout
    const A z = Num<T>::load(h[2 * i]);
    const A u = Num<T>::load(h[2 * i + 1]);
    const A s = sigmoid(z);
    const A da = Num<T>::load(static_cast<const T*>(p.da)[i]);
    const mlp_math::GateGrad<A> g = mlp_math::gate_bwd(z, u, s, da, kExtra ? Num<T>::load(e[2 * i]) : A(0),
                                                       kExtra ? Num<T>::load(e[2 * i + 1]) : A(0));
    const mlp_math::GateGradGrad<A> gg =
        mlp_math::gate_bwd_bwd(z, u, s, da, Num<T>::load(cot_dh[split]), Num<T>::load(cot_dh[split + p.width]),
                               Num<T>::load(static_cast<const T*>(p.cot_a)[i]));
    cot_h[2 * i] = Num<T>::store(gg.cot_h1);
    cot_h[2 * i + 1] = Num<T>::store(gg.cot_h3);
    static_cast<T*>(p.cot_da)[i] = Num<T>::store(gg.cot_da);
    dh[split] = Num<T>::store(g.dh1);
    dh[split + p.width] = Num<T>::store(g.dh3);
    static_cast<T*>(p.a)[i] = Num<T>::store(g.a);
  }
}

// ---- clip_sgd_update ----------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

// Blocks of a grid-stride launch over `items` work items.
dim3 grid_for(int64_t items) {
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(ceil_div(items, kThreads), 1, kMaxBlocks)));
}

template <typename T>
void launch_bwd(const SwigluBwdParams& p, void* stream) {
  constexpr int kVec = 4;  // 4 gates per thread: 16-byte loads of h, 8-byte accesses of da, dh and a
  if (p.width % kVec != 0 || !aligned(p.h, 16) || (p.grad_h != nullptr && !aligned(p.grad_h, 16)) ||
      !aligned(p.da, 8) || !aligned(p.dh, 8) || !aligned(p.a, 8)) {
    throw std::invalid_argument("swiglu_bwd: the width (" + std::to_string(p.width) +
                                ") must be a multiple of 4 and h, grad_h 16-byte, da, dh, a 8-byte aligned");
  }
  launch(p.grad_h ? swiglu_bwd_kernel<T, kVec, true> : swiglu_bwd_kernel<T, kVec, false>,
         grid_for(p.rows * (p.width / kVec)), dim3(kThreads), 0, stream, p);
}

}  // namespace

void pack_rows(const PackRowsParams& p, void* stream) {
  if (p.groups != 1 && p.groups != 2) {
    throw std::invalid_argument("pack_rows: groups must be 1 or 2, got " + std::to_string(p.groups));
  }
  const int64_t rows = p.batch * p.groups * p.src_rows;
  if (rows == 0 || p.cols == 0) return;
  if (p.dst_dtype != DType::kBFloat16 && p.dst_dtype != DType::kFloat16) {
    throw std::invalid_argument("pack_rows: the destination must be bfloat16 or float16");
  }
  const dim3 grid(static_cast<unsigned>(std::min(rows, kMaxBlocks)));
  dispatch_dtype<__nv_bfloat16, __half>(p.src_dtype, "pack_rows", [&](auto src_tag) {
    using Src = decltype(src_tag);
    if (p.dst_dtype == DType::kBFloat16) {
      launch(pack_rows_kernel<Src, __nv_bfloat16>, grid, dim3(kThreads), 0, stream, p);
    } else {
      launch(pack_rows_kernel<Src, __half>, grid, dim3(kThreads), 0, stream, p);
    }
  });
}

void swiglu_bwd(const SwigluBwdParams& p, void* stream) {
  if (p.rows == 0 || p.width == 0) return;
  if (p.dtype == DType::kBFloat16) return launch_bwd<__nv_bfloat16>(p, stream);
  if (p.dtype == DType::kFloat16) return launch_bwd<__half>(p, stream);
  throw std::invalid_argument("swiglu_bwd: the CUDA kernel takes bfloat16 or float16 tensors");
}

void swiglu_bwd_bwd(const SwigluBwdBwdParams& p, void* stream) {
  if (p.rows == 0 || p.width == 0) return;
  dispatch_dtype<__nv_bfloat16, __half>(p.dtype, "swiglu_bwd_bwd", [&](auto tag) {
    using T = decltype(tag);
    launch(p.grad_h ? swiglu_bwd_bwd_kernel<T, true> : swiglu_bwd_bwd_kernel<T, false>, grid_for(p.rows * p.width),
           dim3(kThreads), 0, stream, p);
  });
}

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
