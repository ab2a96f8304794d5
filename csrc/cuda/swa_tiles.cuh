// Tile machinery shared by the sliding-window attention kernels (csrc/cuda/swa.cu: forward and backward;
// csrc/cuda/swa_bwd_bwd.cu: double backward): CTA shape, smem pitch, window geometry, the tiles a query block or
// a key block visits and the double-buffered pipeline over them, cp.async tile loads, the warp-level mma products on
// ldmatrix fragments, the vectorized epilogue, D = rowsum(dout * out), and the host-side argument checks and dtype /
// head_dim dispatch. Included by .cu files only (the .cuh suffix keeps it out of CMake's csrc/cuda/*.cu glob); like
// them it is compiled by nvcc and, under TTT_SIM, by the host compiler.
#pragma once

#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/arch.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/swa.h"

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Positions are int: the launchers reject longer sequences, so that position + window sums cannot overflow.
constexpr int64_t kMaxSeqlen = int64_t{1} << 30;

// Elements per smem row: head_dim plus 16 bytes of padding (bank-conflict-free ldmatrix / cp.async, see above).
template <int kD>
constexpr int kPitch = kD + 8;

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// The window geometry of one (batch, head) problem. Query i sits at position t = i + offset and sees the keys
// t - window + 1 .. t; window is clamped to seqlen_k, which changes nothing and keeps sums of positions in int.
struct Geometry {
  int seqlen_q;
  int seqlen_k;
  int offset;  // seqlen_k - seqlen_q
  int window;

  __device__ explicit Geometry(const SwaParams& p)
      : seqlen_q(static_cast<int>(p.seqlen_q)),
        seqlen_k(static_cast<int>(p.seqlen_k)),
        offset(static_cast<int>(p.seqlen_k - p.seqlen_q)),
        window(static_cast<int>(p.window < p.seqlen_k ? p.window : p.seqlen_k)) {}

  __device__ bool visible(int query, int key) const {
    const int t = query + offset;
    return key <= t && key > t - window;
  }

  // Whether some (query, key) of queries [m0, m0 + rows) x keys [n0, n0 + kKeys) is masked: the tile crosses the
  // causal diagonal or the window's left edge. Key tiles reaching past seqlen_k always cross the diagonal (every
  // query sits at t < seqlen_k), so their zero-filled keys are masked too.
  template <int kKeys>
  __device__ bool tile_needs_mask(int m0, int rows, int n0) const {
    return n0 + kKeys - 1 > m0 + offset || n0 <= m0 + rows - 1 + offset - window;
  }
};

// The key blocks of kN keys a query-block CTA visits: queries [m0, m0 + rows) see the keys
// (m0 + offset - window, m0 + rows - 1 + offset]. Step i visits block last - i, right to left as FlashAttention-2:
// the first block holds the diagonal.
template <int kN>
struct QueryBlockKeys {
  int last;
  int steps;

  __device__ QueryBlockKeys(const Geometry& geo, int m0, int rows)
      : last((m0 + rows - 1 + geo.offset) / kN), steps(last - max(0, m0 + geo.offset - geo.window + 1) / kN + 1) {}

  __device__ int n0(int step) const { return (last - step) * kN; }
};

// The steps of a key-block CTA: keys [n0, n0 + keys) of kv head hk are seen by the queries
// t in [n0 - offset, n0 + keys - 1 + window - 1 - offset] of each of the group's query heads, visited as
// (query head, query block of kM rows) pairs, head-major.
template <int kM>
struct KeyBlockSteps {
  int first_head;
  int m_first;
  int m_blocks;
  int steps;

  __device__ KeyBlockSteps(const Geometry& geo, int group, int hk, int n0, int keys) : first_head(hk * group) {
    const int i_first = max(0, n0 - geo.offset);
    const int i_last = min(geo.seqlen_q - 1, n0 + keys + geo.window - 2 - geo.offset);
    m_first = i_first / kM;
    m_blocks = i_last >= i_first ? i_last / kM - m_first + 1 : 0;
    steps = group * m_blocks;
  }

  __device__ int head(int step) const { return first_head + step / m_blocks; }
  __device__ int m0(int step) const { return (m_first + step % m_blocks) * kM; }
};

// The double-buffered cp.async pipeline of every kernel's main loop: load(i, stage) issues step i's tile loads into
// smem stage `stage` (0 or 1), body(i, stage) consumes them. Step i + 1's loads are in flight while step i runs;
// loads the caller issued before the call land with step 0's. The barrier after each body keeps the next loads off a
// stage other warps still read.
template <typename Load, typename Body>
__device__ __forceinline__ void pipelined_steps(int steps, const Load& load, const Body& body) {
  if (steps <= 0) return;
  load(0, 0);
  arch::cp_async_commit();
  for (int step = 0, stage = 0; step < steps; ++step, stage ^= 1) {
    if (step + 1 < steps) {
      load(step + 1, stage ^ 1);
      arch::cp_async_commit();
      arch::cp_async_wait<1>();
    } else {
      arch::cp_async_wait<0>();
    }
    __syncthreads();
    body(step, stage);
    __syncthreads();
  }
}

// Rows of head `head` of batch `b` of a [batch, seqlen, heads, head_dim] tensor; Elem const for inputs.
template <typename Elem, typename Void>
__device__ __forceinline__ Elem* head_rows(Void* base, int64_t batch_stride, int64_t head_stride, int b, int head) {
  return static_cast<Elem*>(base) + b * batch_stride + head * head_stride;
}

// Copies rows [0, rows) of a [kRows, kD] global tile (row stride `stride` elements, 16-byte aligned rows) to smem
// rows of kPitch elements with 16-byte cp.async, zero-filling rows >= rows. All kThreads threads call it; the caller
// commits the group. Thread i copies column chunk i % kD/8 of the rows i / (kD/8) + pass * kRowsPerPass (threads past
// kRowsPerPass full rows idle): its source pointer only advances by a constant between passes, which keeps the
// address registers few.
template <int kRows, int kD, typename Elem>
__device__ __forceinline__ void load_tile(Elem* smem, const Elem* gmem, int64_t stride, int rows) {
  constexpr int kChunksPerRow = kD / 8;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  const int col = threadIdx.x % kChunksPerRow * 8;
  int r = threadIdx.x / kChunksPerRow;
  if (r >= kRowsPerPass) return;
  const Elem* src = gmem + r * stride + col;
  Elem* dst = smem + r * kPitch<kD> + col;
  for (; r < kRows; r += kRowsPerPass) {
    const bool in = r < rows;
    arch::cp_async_cg(dst, in ? src : gmem, in ? 16 : 0);
    src += kRowsPerPass * stride;
    dst += kRowsPerPass * kPitch<kD>;
  }
}

// One warp: acc[16, kN] += A B^T with A = the 16 smem rows at `a` and B = the kN smem rows at `b` (both [., kD],
// row-major, kPitch apart). acc[j] holds columns 8j .. 8j + 7 in the mma C layout.
template <typename Elem, int kD, int kN>
__device__ __forceinline__ void gemm_abt(float (&acc)[kN / 8][4], const Elem* a, const Elem* b, int lane) {
#pragma unroll
  for (int k = 0; k < kD; k += 16) {
    uint32_t fa[4];
    arch::ldmatrix(fa, a + (lane % 16) * kPitch<kD> + k + lane / 16 * 8);
#pragma unroll
    for (int n = 0; n < kN; n += 16) {
      // Matrices 0, 1: B rows n .. n+7 at columns k, k+8 (one n8 fragment); 2, 3: rows n+8 .. n+15.
      uint32_t fb[4];
      arch::ldmatrix(fb, b + (n + lane % 8 + lane / 16 * 8) * kPitch<kD> + k + lane / 8 % 2 * 8);
      const uint32_t b0[2] = {fb[0], fb[1]};
      const uint32_t b1[2] = {fb[2], fb[3]};
      arch::mma_m16n8k16<Elem>(acc[n / 8], fa, b0, acc[n / 8]);
      arch::mma_m16n8k16<Elem>(acc[n / 8 + 1], fa, b1, acc[n / 8 + 1]);
    }
  }
}

// One warp: acc[16, kD] += A B with A [16, kK] in registers (mma A fragments, from to_a_operand) and B = the kK smem
// rows at `b` ([kK, kD] row-major, kPitch apart), read with ldmatrix.trans.
template <typename Elem, int kD, int kK>
__device__ __forceinline__ void gemm_rb(float (&acc)[kD / 8][4], const uint32_t (&a)[kK / 16][4], const Elem* b,
                                        int lane) {
#pragma unroll
  for (int k = 0; k < kK / 16; ++k) {
#pragma unroll
    for (int n = 0; n < kD; n += 16) {
      // Matrices 0, 1: B rows 16k .. 16k+15 at column n (one n8 fragment); 2, 3: the same rows at column n + 8.
      uint32_t fb[4];
      arch::ldmatrix_trans(fb, b + (16 * k + lane % 16) * kPitch<kD> + n + lane / 16 * 8);
      const uint32_t b0[2] = {fb[0], fb[1]};
      const uint32_t b1[2] = {fb[2], fb[3]};
      arch::mma_m16n8k16<Elem>(acc[n / 8], a[k], b0, acc[n / 8]);
      arch::mma_m16n8k16<Elem>(acc[n / 8 + 1], a[k], b1, acc[n / 8 + 1]);
    }
  }
}

// An fp32 accumulator [16, kN] (C layout) rounded to kN / 16 A fragments [16, 16]: the C fragments of columns
// 16k .. 16k+7 and 16k+8 .. 16k+15 are exactly the A registers {0, 1} and {2, 3} of k-block k.
template <typename Elem, int kN>
__device__ __forceinline__ void to_a_operand(uint32_t (&a)[kN / 16][4], const float (&c)[kN / 8][4]) {
#pragma unroll
  for (int k = 0; k < kN / 16; ++k) {
    a[k][0] = arch::pack2<Elem>(c[2 * k][0], c[2 * k][1]);
    a[k][1] = arch::pack2<Elem>(c[2 * k][2], c[2 * k][3]);
    a[k][2] = arch::pack2<Elem>(c[2 * k + 1][0], c[2 * k + 1][1]);
    a[k][3] = arch::pack2<Elem>(c[2 * k + 1][2], c[2 * k + 1][3]);
  }
}

// Max / sum over the 4 lanes (threadID_in_group) that hold one accumulator row.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One warp: writes rows [0, rows) of acc[16, kD] (row g scaled by row_scale[0], row g + 8 by row_scale[1]) to
// global memory (row stride `stride`), staged in the warp's 16 smem rows `stage` (which no other warp reads) so that
// the global stores are 16-byte vectors.
template <typename Elem, int kD>
__device__ __forceinline__ void store_rows(const float (&acc)[kD / 8][4], const float (&row_scale)[2], Elem* stage,
                                           Elem* gmem, int64_t stride, int rows, int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) {
    *reinterpret_cast<uint32_t*>(stage + g * kPitch<kD> + 8 * j + 2 * t) =
        arch::pack2<Elem>(acc[j][0] * row_scale[0], acc[j][1] * row_scale[0]);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * kPitch<kD> + 8 * j + 2 * t) =
        arch::pack2<Elem>(acc[j][2] * row_scale[1], acc[j][3] * row_scale[1]);
  }
  __syncwarp();
  constexpr int kChunksPerRow = kD / 8;
  static_assert(16 * kChunksPerRow % 32 == 0, "every lane stores the same number of chunks");
#pragma unroll
  for (int i = 0; i < 16 * kChunksPerRow / 32; ++i) {
    const int c = i * 32 + lane;
    const int r = c / kChunksPerRow;
    const int col = c % kChunksPerRow * 8;
    if (r < rows) {
      *reinterpret_cast<uint4*>(gmem + r * stride + col) =
          *reinterpret_cast<const uint4*>(stage + r * kPitch<kD> + col);
    }
  }
}

// ---- backward statistics ---------------------------------------------------------------------------------------

// softmax_d[b, h, i] = sum over head_dim of dout * out (fp32), for the (b, i, h) rows blockIdx.x * 8 + threadIdx.x /
// 16: 16 lanes share a row (head_dim <= 128 = 16 vectors of 8), each loading one 16-byte vector of dout and of out.
template <typename Elem>
__global__ void __launch_bounds__(kThreads) swa_bwd_dot_do_o_kernel(const SwaParams p) {
  struct alignas(16) Vec {
    Elem v[8];
  };
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 16) + threadIdx.x / 16;
  const int lane16 = threadIdx.x % 16;
  const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
  const int64_t h = row % p.heads_q;
  const int64_t i = row / p.heads_q % p.seqlen_q;
  const int64_t b = row / (p.heads_q * p.seqlen_q);
  float acc = 0.0f;
  if (row < rows && lane16 * 8 < p.head_dim) {
    const Vec d = *reinterpret_cast<const Vec*>(static_cast<const Elem*>(p.dout) + b * p.do_batch_stride +
                                                i * p.do_row_stride + h * p.do_head_stride + lane16 * 8);
    const Vec o = *reinterpret_cast<const Vec*>(static_cast<const Elem*>(p.out) + b * p.o_batch_stride +
                                                i * p.o_row_stride + h * p.o_head_stride + lane16 * 8);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += to_float(d.v[e]) * to_float(o.v[e]);
  }
#pragma unroll
  for (int offset = 8; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (row < rows && lane16 == 0) static_cast<float*>(p.softmax_d)[(b * p.heads_q + h) * p.seqlen_q + i] = acc;
}

// ---- host side -------------------------------------------------------------------------------------------------

// Grid of ceil(x_items / x_per_block) x y x z blocks (check_supported keeps y and z <= 65535).
inline dim3 grid_of(int64_t x_items, int x_per_block, int64_t y, int64_t z) {
  return dim3(static_cast<unsigned>((x_items + x_per_block - 1) / x_per_block), static_cast<unsigned>(y),
              static_cast<unsigned>(z));
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
  }
  return "an unknown dtype";
}

// `name` points to 16-byte aligned rows: cp.async and the epilogue's vector stores move 16 bytes at a time.
inline void check_rows_aligned(const char* op, const char* name, const void* ptr, int64_t batch_stride,
                               int64_t row_stride, int64_t head_stride) {
  const bool aligned = reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && batch_stride % 8 == 0 && row_stride % 8 == 0 &&
                       head_stride % 8 == 0;
  if (!aligned) {
    throw std::runtime_error(std::string(op) + " (CUDA): " + name +
                             " must be 16-byte aligned with batch, row and head strides that are multiples of 8 "
                             "elements, got strides (" +
                             std::to_string(batch_stride) + ", " + std::to_string(row_stride) + ", " +
                             std::to_string(head_stride) + ")");
  }
}

// What the kernels support, checked before any launch: 16-bit dtypes, the compiled head dims, int positions, the
// grid's y/z limits, 16-byte aligned rows of q, k, v and out.
inline void check_supported(const char* op, const SwaParams& p) {
  const std::string prefix = std::string(op) + " (CUDA): ";
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16) {
    throw std::runtime_error(prefix + "the CUDA kernels take bfloat16 or float16 tensors, got " +
                             dtype_name(p.dtype));
  }
  if (p.head_dim != 64 && p.head_dim != 80 && p.head_dim != 96 && p.head_dim != 128) {
    throw std::runtime_error(prefix + "head_dim must be 64, 80, 96 or 128, got " + std::to_string(p.head_dim));
  }
  if (p.seqlen_k > kMaxSeqlen || p.seqlen_q > p.seqlen_k || p.window < 1) {
    throw std::runtime_error(prefix + "need 1 <= window and seqlen_q <= seqlen_k <= 2^30, got seqlen_q " +
                             std::to_string(p.seqlen_q) + ", seqlen_k " + std::to_string(p.seqlen_k) + ", window " +
                             std::to_string(p.window));
  }
  if (p.heads_kv < 1 || p.heads_q % p.heads_kv != 0 || p.heads_q > 65535 || p.batch > 65535) {
    throw std::runtime_error(prefix + "need heads_q a multiple of heads_kv, heads_q <= 65535 and batch <= 65535, got " +
                             "heads_q " + std::to_string(p.heads_q) + ", heads_kv " + std::to_string(p.heads_kv) +
                             ", batch " + std::to_string(p.batch));
  }
  check_rows_aligned(op, "q", p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  check_rows_aligned(op, "k", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  check_rows_aligned(op, "v", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  check_rows_aligned(op, "out", p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
}

// Calls fn(Elem{}, std::integral_constant<int, head_dim>{}); check_supported has validated both.
template <typename Fn>
void dispatch(const SwaParams& p, Fn&& fn) {
  const auto with_head_dim = [&](auto elem) {
    switch (p.head_dim) {
      case 64:
        return fn(elem, std::integral_constant<int, 64>{});
      case 80:
        return fn(elem, std::integral_constant<int, 80>{});
      case 96:
        return fn(elem, std::integral_constant<int, 96>{});
      default:
        return fn(elem, std::integral_constant<int, 128>{});
    }
  };
  if (p.dtype == DType::kBFloat16) {
    with_head_dim(__nv_bfloat16{});
  } else {
    with_head_dim(__half{});
  }
}

}  // namespace
}  // namespace ttt::TTT_CUDA_NS
