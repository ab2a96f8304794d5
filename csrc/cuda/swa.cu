// Fused causal sliding-window attention, CUDA kernels for sm_80+ (math, layout and params: include/ttt_kernels/swa.h;
// design, smem layouts and resource usage: docs/swa.md).
//
// FlashAttention-2 structure, bf16/fp16 inputs with fp32 accumulation, head_dim 64, 80, 96 or 128 (a template
// parameter: every head_dim is a multiple of the mma k-granularity 16). A CTA has 4 warps; a warp owns 16 rows of every
// tile and keeps its accumulators in mma C-fragment registers. Tiles live in shared memory as rows of head_dim
// elements padded by 16 bytes (kPitch): the 8 row addresses of an ldmatrix then fall into distinct 16-byte bank
// groups for every head_dim, without a swizzle.
//
// Forward, grid (query blocks of 64, heads_q, batch): Q tile [64, d] loaded once; K/V tiles [64, d] double-buffered
//   with cp.async (tile n+1 is in flight while tile n is used); S = Q K^T by mma (ldmatrix for both operands),
//   scaled by scale * log2(e) so that exp2f gives the softmax (any finite scale, negative too), online softmax in
//   registers, P rounded to bf16/fp16 in registers and used directly as the A operand of O += P V (the accumulator
//   layout of S equals the A-operand layout of P). Only the key blocks that intersect the block's windows are visited
//   (work O(seqlen * window)); the element mask runs only on tiles that cross the causal diagonal, the window's left
//   edge or the end of the keys. Epilogue: O / rowsum through the warp's smem rows to 16-byte global stores; lse in
//   natural log.
// Backward, three kernels, all deterministic (no atomics):
//   1. swa_bwd_dot_do_o_kernel: D = rowsum(dout * out) in fp32 -> softmax_d [batch, heads_q, seqlen_q].
//   2. swa_bwd_dkdv_kernel, grid (key blocks of 64, heads_kv, batch): K, V tiles stay in smem; the CTA walks every
//      (query head of the kv head's group, query block whose windows touch the key block) pair with Q, dout, lse and D
//      double-buffered. Warps own 16 keys, so everything is computed transposed: S^T = K Q^T, P^T = exp2(S^T - lse),
//      dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q, with P^T and dS^T reused from registers as
//      A operands. The group's query heads are summed inside the CTA, so dk/dv need no workspace.
//   3. swa_bwd_dq_kernel, grid (query blocks of 64, heads_q, batch): the forward's loop recomputing S, P, dP = dO V^T
//      and dS per key tile, dQ += dS K in registers. Recomputing S and dP costs two extra tile GEMMs per tile over an
//      atomicAdd dq accumulation but makes dq bitwise reproducible, and needs no dq workspace.
// Every loop over a compile-time trip count is unrolled (`#pragma unroll`; the simulator's host compiler ignores it),
// so fragment arrays stay in registers (ptxas: 0-byte stack frames for every head_dim on sm_80 and sm_90a).
#include "swa_tiles.cuh"

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kBlockM = 16 * kWarps;  // query rows of a forward / dq tile: 16 per warp
constexpr int kBlockN = 64;           // key rows of a tile; in the dk/dv kernel 16 per warp
// Query rows of a dk/dv kernel tile. A warp holds dK, dV [16, kD] and S^T, dP^T [16, kBwdBlockM] as fp32 fragments:
// with 64 query rows, kD = 96 needs ~250 of the 255 registers a thread can have and kD = 128 spills.
template <int kD>
constexpr int kBwdBlockM = kD <= 80 ? 64 : 32;
static_assert(kBlockN == 16 * kWarps, "the dk/dv kernel gives every warp 16 keys");

template <int kD>
constexpr size_t fwd_smem_bytes() {  // Q [kBlockM] + K, V [2 stages][kBlockN], rows of kPitch 16-bit elements
  return size_t{kBlockM + 4 * kBlockN} * kPitch<kD> * 2;
}
template <int kD>
constexpr size_t dq_smem_bytes() {  // Q, dO [kBlockM] + K, V [2 stages][kBlockN]
  return size_t{2 * kBlockM + 4 * kBlockN} * kPitch<kD> * 2;
}
template <int kD>
constexpr size_t dkdv_smem_bytes() {  // K, V [kBlockN] + Q, dO [2 stages][kBwdBlockM] + lse, D [2 stages][kBwdBlockM]
  return size_t{2 * kBlockN + 4 * kBwdBlockM<kD>} * kPitch<kD> * 2 + 4 * kBwdBlockM<kD> * sizeof(float);
}

// ---- forward ---------------------------------------------------------------------------------------------------

// out, lse of the queries [blockIdx.x * kBlockM, +kBlockM) of head blockIdx.y, batch blockIdx.z.
// Dynamic smem: fwd_smem_bytes<kD>().
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads, 1) swa_fwd_kernel(const SwaParams p) {
  constexpr int kP = kPitch<kD>;
  const Geometry geo(p);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / (static_cast<int>(p.heads_q) / static_cast<int>(p.heads_kv));
  const int m0 = blockIdx.x * kBlockM;
  const int rows = min(kBlockM, geo.seqlen_q - m0);
  const QueryBlockKeys<kBlockN> key_blocks(geo, m0, rows);

  Elem* s_q = dynamic_smem<Elem>();
  Elem* s_k = s_q + kBlockM * kP;  // [2][kBlockN][kP]
  Elem* s_v = s_k + 2 * kBlockN * kP;
  const Elem* q = head_rows<const Elem>(p.q, p.q_batch_stride, p.q_head_stride, b, h);
  const Elem* k = head_rows<const Elem>(p.k, p.k_batch_stride, p.k_head_stride, b, hk);
  const Elem* v = head_rows<const Elem>(p.v, p.v_batch_stride, p.v_head_stride, b, hk);
  const auto load_kv = [&](int step, int stage) {
    const int n0 = key_blocks.n0(step);
    const int valid = min(kBlockN, geo.seqlen_k - n0);
    load_tile<kBlockN, kD>(s_k + stage * kBlockN * kP, k + n0 * p.k_row_stride, p.k_row_stride, valid);
    load_tile<kBlockN, kD>(s_v + stage * kBlockN * kP, v + n0 * p.v_row_stride, p.v_row_stride, valid);
  };
  load_tile<kBlockM, kD>(s_q, q + m0 * p.q_row_stride, p.q_row_stride, rows);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const Elem* s_q_warp = s_q + warp * 16 * kP;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  float o[kD / 8][4] = {};
  // Running max (in scaled log2 units) and this lane's partial sum of exp2(s - max) of rows g and g + 8.
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};
  pipelined_steps(key_blocks.steps, load_kv, [&](int step, int stage) {
    const int n0 = key_blocks.n0(step);
    float s[kBlockN / 8][4] = {};
    gemm_abt<Elem, kD, kBlockN>(s, s_q_warp, s_k + stage * kBlockN * kP, lane);
    const bool mask = geo.tile_needs_mask<kBlockN>(m0, rows, n0);
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] *= scale_log2;
        if (mask && !geo.visible(m0 + warp * 16 + g + e / 2 * 8, n0 + 8 * j + 2 * t + e % 2)) s[j][e] = -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = row_max[r];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      tile_max = quad_max(tile_max);
      // A row without a visible key so far keeps max -inf: exponentiate against 0 instead (giving 0, not NaN).
      const float base = tile_max == -INFINITY ? 0.0f : tile_max;
      const float rescale = exp2f(row_max[r] - base);
      row_max[r] = tile_max;
      row_sum[r] *= rescale;
#pragma unroll
      for (int j = 0; j < kD / 8; ++j) {
        o[j][2 * r] *= rescale;
        o[j][2 * r + 1] *= rescale;
      }
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - base);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
        row_sum[r] += s[j][2 * r] + s[j][2 * r + 1];
      }
    }
    uint32_t pa[kBlockN / 16][4];
    to_a_operand<Elem, kBlockN>(pa, s);
    gemm_rb<Elem, kD, kBlockN>(o, pa, s_v + stage * kBlockN * kP, lane);
  });

  // Every query sees at least its own key, so rows < seqlen_q have row_sum >= 1 (the max element contributes 1);
  // rows past seqlen_q are not stored.
  float inv_sum[2];
  float* lse = static_cast<float*>(p.softmax_lse) + (static_cast<int64_t>(b) * p.heads_q + h) * geo.seqlen_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] = quad_sum(row_sum[r]);
    inv_sum[r] = 1.0f / row_sum[r];
    const int row = m0 + warp * 16 + g + 8 * r;
    if (t == 0 && row < geo.seqlen_q) lse[row] = (row_max[r] + log2f(row_sum[r])) * kLn2;
  }
  Elem* out = head_rows<Elem>(p.out, p.o_batch_stride, p.o_head_stride, b, h);
  store_rows<Elem, kD>(o, inv_sum, s_q + warp * 16 * kP, out + (m0 + warp * 16) * p.o_row_stride, p.o_row_stride,
                       rows - warp * 16, lane);
}

// ---- backward --------------------------------------------------------------------------------------------------


// dk, dv of the keys [blockIdx.x * kBlockN, +kBlockN) of kv head blockIdx.y, batch blockIdx.z, summed over the
// heads_q / heads_kv query heads of the kv head. Warp w owns keys 16w .. 16w + 15 of the block.
// Dynamic smem: dkdv_smem_bytes<kD>().
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads, 1) swa_bwd_dkdv_kernel(const SwaParams p) {
  constexpr int kP = kPitch<kD>;
  constexpr int kBM = kBwdBlockM<kD>;
  const Geometry geo(p);
  const int hk = blockIdx.y;
  const int b = blockIdx.z;
  const int n0 = blockIdx.x * kBlockN;
  const int keys = min(kBlockN, geo.seqlen_k - n0);
  const KeyBlockSteps<kBM> walk(geo, static_cast<int>(p.heads_q / p.heads_kv), hk, n0, keys);

  Elem* s_k = dynamic_smem<Elem>();  // [kBlockN][kP]
  Elem* s_v = s_k + kBlockN * kP;
  Elem* s_q = s_v + kBlockN * kP;    // [2][kBM][kP]
  Elem* s_do = s_q + 2 * kBM * kP;   // [2][kBM][kP]
  float* s_lse = reinterpret_cast<float*>(s_do + 2 * kBM * kP);  // [2][kBM]
  float* s_dd = s_lse + 2 * kBM;                                 // [2][kBM]: D

  const float* lse = static_cast<const float*>(p.softmax_lse);
  const float* dd = static_cast<const float*>(p.softmax_d);
  // Q, dout, lse and D of a step's query block into `stage`; rows past seqlen_q are zero-filled, which makes their
  // P = exp2(0 - 0) = 1 meet zero dout and D: they add exactly nothing to dk and dv.
  const auto load_step = [&](int step, int stage) {
    const int h = walk.head(step);
    const int m0 = walk.m0(step);
    const int rows = min(kBM, geo.seqlen_q - m0);
    load_tile<kBM, kD>(s_q + stage * kBM * kP,
                       head_rows<const Elem>(p.q, p.q_batch_stride, p.q_head_stride, b, h) + m0 * p.q_row_stride,
                       p.q_row_stride, rows);
    load_tile<kBM, kD>(s_do + stage * kBM * kP,
                       head_rows<const Elem>(p.dout, p.do_batch_stride, p.do_head_stride, b, h) +
                           m0 * p.do_row_stride,
                       p.do_row_stride, rows);
    const int64_t stats = (static_cast<int64_t>(b) * p.heads_q + h) * geo.seqlen_q + m0;
    static_assert(kBM <= kThreads, "one thread per query row copies its lse and D");
    const int r = threadIdx.x;
    if (r < kBM) {
      const bool in = r < rows;
      arch::cp_async_ca<4>(s_lse + stage * kBM + r, lse + (in ? stats + r : 0), in ? 4 : 0);
      arch::cp_async_ca<4>(s_dd + stage * kBM + r, dd + (in ? stats + r : 0), in ? 4 : 0);
    }
  };

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const Elem* s_k_warp = s_k + warp * 16 * kP;
  const Elem* s_v_warp = s_v + warp * 16 * kP;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  float dk[kD / 8][4] = {};
  float dv[kD / 8][4] = {};
  if (walk.steps > 0) {  // a key block no query sees stores zeros
    const Elem* k = head_rows<const Elem>(p.k, p.k_batch_stride, p.k_head_stride, b, hk);
    const Elem* v = head_rows<const Elem>(p.v, p.v_batch_stride, p.v_head_stride, b, hk);
    load_tile<kBlockN, kD>(s_k, k + n0 * p.k_row_stride, p.k_row_stride, keys);
    load_tile<kBlockN, kD>(s_v, v + n0 * p.v_row_stride, p.v_row_stride, keys);
  }
  pipelined_steps(walk.steps, load_step, [&](int step, int stage) {
    const int m0 = walk.m0(step);
    const Elem* q_tile = s_q + stage * kBM * kP;
    const Elem* do_tile = s_do + stage * kBM * kP;
    const float* lse_tile = s_lse + stage * kBM;
    const float* d_tile = s_dd + stage * kBM;
    // S^T [16 keys, kBM queries] -> P^T = exp2(S^T * scale * log2(e) - lse * log2(e)), 0 where masked.
    float s[kBM / 8][4] = {};
    gemm_abt<Elem, kD, kBM>(s, s_k_warp, q_tile, lane);
    const bool mask = geo.tile_needs_mask<kBlockN>(m0, min(kBM, geo.seqlen_q - m0), n0);
#pragma unroll
    for (int j = 0; j < kBM / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * t + e % 2;
        const float p_val = exp2f(s[j][e] * scale_log2 - lse_tile[col] * kLog2e);
        s[j][e] = mask && !geo.visible(m0 + col, n0 + warp * 16 + g + e / 2 * 8) ? 0.0f : p_val;
      }
    }
    uint32_t pa[kBM / 16][4];
    to_a_operand<Elem, kBM>(pa, s);
    gemm_rb<Elem, kD, kBM>(dv, pa, do_tile, lane);
    // dS^T = P^T (dP^T - D) with dP^T = V dO^T.
    float dp[kBM / 8][4] = {};
    gemm_abt<Elem, kD, kBM>(dp, s_v_warp, do_tile, lane);
#pragma unroll
    for (int j = 0; j < kBM / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[j][e] = s[j][e] * (dp[j][e] - d_tile[8 * j + 2 * t + e % 2]);
    }
    to_a_operand<Elem, kBM>(pa, dp);
    gemm_rb<Elem, kD, kBM>(dk, pa, q_tile, lane);
  });

  // Each warp stages its results in its own K and V rows, which only it has read.
  const float dk_scale[2] = {static_cast<float>(p.scale), static_cast<float>(p.scale)};
  const float dv_scale[2] = {1.0f, 1.0f};
  Elem* dk_out = head_rows<Elem>(p.dk, p.dk_batch_stride, p.dk_head_stride, b, hk) + (n0 + warp * 16) * p.dk_row_stride;
  Elem* dv_out = head_rows<Elem>(p.dv, p.dv_batch_stride, p.dv_head_stride, b, hk) + (n0 + warp * 16) * p.dv_row_stride;
  store_rows<Elem, kD>(dk, dk_scale, s_k + warp * 16 * kP, dk_out, p.dk_row_stride, keys - warp * 16, lane);
  store_rows<Elem, kD>(dv, dv_scale, s_v + warp * 16 * kP, dv_out, p.dv_row_stride, keys - warp * 16, lane);
}

// dq of the queries [blockIdx.x * kBlockM, +kBlockM) of head blockIdx.y, batch blockIdx.z: the forward's loop over
// the key tiles, with dS = P (dO V^T - D) and dQ += dS K. Dynamic smem: dq_smem_bytes<kD>().
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads, 1) swa_bwd_dq_kernel(const SwaParams p) {
  constexpr int kP = kPitch<kD>;
  const Geometry geo(p);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / (static_cast<int>(p.heads_q) / static_cast<int>(p.heads_kv));
  const int m0 = blockIdx.x * kBlockM;
  const int rows = min(kBlockM, geo.seqlen_q - m0);
  const QueryBlockKeys<kBlockN> key_blocks(geo, m0, rows);

  Elem* s_q = dynamic_smem<Elem>();
  Elem* s_do = s_q + kBlockM * kP;
  Elem* s_k = s_do + kBlockM * kP;  // [2][kBlockN][kP]
  Elem* s_v = s_k + 2 * kBlockN * kP;
  const Elem* k = head_rows<const Elem>(p.k, p.k_batch_stride, p.k_head_stride, b, hk);
  const Elem* v = head_rows<const Elem>(p.v, p.v_batch_stride, p.v_head_stride, b, hk);
  const auto load_kv = [&](int step, int stage) {
    const int n0 = key_blocks.n0(step);
    const int valid = min(kBlockN, geo.seqlen_k - n0);
    load_tile<kBlockN, kD>(s_k + stage * kBlockN * kP, k + n0 * p.k_row_stride, p.k_row_stride, valid);
    load_tile<kBlockN, kD>(s_v + stage * kBlockN * kP, v + n0 * p.v_row_stride, p.v_row_stride, valid);
  };
  load_tile<kBlockM, kD>(s_q, head_rows<const Elem>(p.q, p.q_batch_stride, p.q_head_stride, b, h) + m0 * p.q_row_stride,
                         p.q_row_stride, rows);
  load_tile<kBlockM, kD>(s_do,
                         head_rows<const Elem>(p.dout, p.do_batch_stride, p.do_head_stride, b, h) +
                             m0 * p.do_row_stride,
                         p.do_row_stride, rows);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const Elem* s_q_warp = s_q + warp * 16 * kP;
  const Elem* s_do_warp = s_do + warp * 16 * kP;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  // lse * log2(e) and D of rows g and g + 8 (0 past seqlen_q: those rows are not stored).
  float lse_log2[2];
  float d_row[2];
  const int64_t stats = (static_cast<int64_t>(b) * p.heads_q + h) * geo.seqlen_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + warp * 16 + g + 8 * r;
    const bool in = row < geo.seqlen_q;
    lse_log2[r] = in ? static_cast<const float*>(p.softmax_lse)[stats + row] * kLog2e : 0.0f;
    d_row[r] = in ? static_cast<const float*>(p.softmax_d)[stats + row] : 0.0f;
  }

  float dq[kD / 8][4] = {};
  pipelined_steps(key_blocks.steps, load_kv, [&](int step, int stage) {
    const int n0 = key_blocks.n0(step);
    const Elem* k_tile = s_k + stage * kBlockN * kP;
    float s[kBlockN / 8][4] = {};
    gemm_abt<Elem, kD, kBlockN>(s, s_q_warp, k_tile, lane);
    float dp[kBlockN / 8][4] = {};
    gemm_abt<Elem, kD, kBlockN>(dp, s_do_warp, s_v + stage * kBlockN * kP, lane);
    const bool mask = geo.tile_needs_mask<kBlockN>(m0, rows, n0);
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const float p_val = exp2f(s[j][e] * scale_log2 - lse_log2[r]);
        const bool hidden = mask && !geo.visible(m0 + warp * 16 + g + 8 * r, n0 + 8 * j + 2 * t + e % 2);
        dp[j][e] = hidden ? 0.0f : p_val * (dp[j][e] - d_row[r]);
      }
    }
    uint32_t ds[kBlockN / 16][4];
    to_a_operand<Elem, kBlockN>(ds, dp);
    gemm_rb<Elem, kD, kBlockN>(dq, ds, k_tile, lane);
  });

  const float dq_scale[2] = {static_cast<float>(p.scale), static_cast<float>(p.scale)};
  Elem* dq_out = head_rows<Elem>(p.dq, p.dq_batch_stride, p.dq_head_stride, b, h);
  store_rows<Elem, kD>(dq, dq_scale, s_q + warp * 16 * kP, dq_out + (m0 + warp * 16) * p.dq_row_stride,
                       p.dq_row_stride, rows - warp * 16, lane);
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------


}  // namespace

void swa_fwd(const SwaParams& p, void* stream) {
  check_supported("swa_fwd", p);
  if (p.batch == 0 || p.heads_q == 0 || p.seqlen_q == 0) return;
  dispatch(p, [&](auto elem, auto head_dim) {
    using Elem = decltype(elem);
    constexpr int kD = decltype(head_dim)::value;
    launch(swa_fwd_kernel<Elem, kD>, grid_of(p.seqlen_q, kBlockM, p.heads_q, p.batch), dim3(kThreads),
           fwd_smem_bytes<kD>(), stream, p);
  });
}

void swa_bwd(const SwaParams& p, void* stream) {
  check_supported("swa_bwd", p);
  check_rows_aligned("swa_bwd", "dout", p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  check_rows_aligned("swa_bwd", "dq", p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  check_rows_aligned("swa_bwd", "dk", p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  check_rows_aligned("swa_bwd", "dv", p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  if (p.softmax_d == nullptr && p.batch * p.heads_q * p.seqlen_q > 0) {
    throw std::runtime_error("swa_bwd (CUDA): softmax_d must point to a float32 [batch, heads_q, seqlen_q] workspace");
  }
  if (p.batch == 0 || p.heads_q == 0 || p.seqlen_k == 0) return;
  dispatch(p, [&](auto elem, auto head_dim) {
    using Elem = decltype(elem);
    constexpr int kD = decltype(head_dim)::value;
    if (p.seqlen_q > 0) {
      launch(swa_bwd_dot_do_o_kernel<Elem>, grid_of(p.batch * p.seqlen_q * p.heads_q, kThreads / 16, 1, 1),
             dim3(kThreads), 0, stream, p);
    }
    // Key blocks no query sees (seqlen_q < seqlen_k) still get their zero dk, dv written.
    launch(swa_bwd_dkdv_kernel<Elem, kD>, grid_of(p.seqlen_k, kBlockN, p.heads_kv, p.batch), dim3(kThreads),
           dkdv_smem_bytes<kD>(), stream, p);
    if (p.seqlen_q > 0) {
      launch(swa_bwd_dq_kernel<Elem, kD>, grid_of(p.seqlen_q, kBlockM, p.heads_q, p.batch), dim3(kThreads),
             dq_smem_bytes<kD>(), stream, p);
    }
  });
}

}  // namespace ttt::TTT_CUDA_NS