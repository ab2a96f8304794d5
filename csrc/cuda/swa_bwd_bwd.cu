// Double backward of fused causal sliding-window attention, CUDA kernels for sm_80+ (math and params:
// include/ttt_kernels/swa_bwd_bwd.h; derivation, design and resource usage: docs/swa_bwd_bwd.md).
//
// Built on the backward's tile machinery (swa_tiles.cuh): 4 warps per CTA, a warp owns 16 rows of every tile, fp32
// accumulators in mma C fragments, smem rows of head_dim + 8 elements filled by double-buffered cp.async. Per (batch,
// query head), with c = scale and the cotangents u_q = gdq, u_k = gdk, u_v = gdv:
//   S = c Q K^T -> P,  dP = dO V^T,  A = c (Uq K^T + Q Uk^T),  B = dO Uv^T
//   dS = P (dP - D),  GdP = P (A - E),  GS = A dS + P (B - F - E dP)     (= P (A (dP - D) - E dP + B - F))
// Four launches, all deterministic (no atomics), every one visiting only the tiles inside the windows:
//   1. swa_bwd_dot_do_o_kernel (shared with the backward): D = rowsum(dout * out) -> softmax_d.
//   2. swa_bwd_bwd_query_kernel<kGradients = false>, grid (query blocks of 64, heads_q, batch): the dq kernel's loop
//      over key tiles computing S, dP, A, B per tile, reduced to the row statistics E = rowsum(P A) and
//      F = rowsum(dS A + P B) - E D -> row_e, row_f.
//   3. swa_bwd_bwd_query_kernel<kGradients = true>: the same loop, forming dS, GdP, GS in registers and accumulating
//      grad_q = c (GS K + dS Uk) and grad_dout = GdP V + P Uv (each C fragment reused as the A operand of the next
//      product, as in the dq kernel).
//   4. swa_bwd_bwd_key_kernel, grid (key blocks of 64, heads_kv, batch): the dk/dv kernel's transposed walk over
//      (query head of the group, query block) steps, accumulating grad_k = c (GS^T Q + dS^T Uq) and
//      grad_v = GdP^T dO, summed over the group's query heads inside the CTA.
// A warp holds four fp32 score-shaped tiles [16, kTile] and, in the gradient kernels, two fp32 [16, head_dim]
// accumulators; kTile (keys per step of the query kernels, queries per step of the key kernel) shrinks with head_dim
// so that nothing spills. An absent cotangent (nullptr) is neither loaded nor multiplied: its products are skipped by
// warp-uniform branches.
#include "swa_tiles.cuh"
#include "ttt_kernels/swa_bwd_bwd.h"

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kRows = 16 * kWarps;  // query rows of a query-kernel CTA, key rows of a key-kernel CTA
// Columns of the score-shaped register tiles. Registers per thread: 2 kTile for the four tiles plus kD for the two
// accumulators (fp32 [16, n] is n / 2 registers per lane), plus operand fragments and addresses. The statistics pass
// has the registers for twice the tile but shares it: its K, V, Uk, Uv stages would take 91-121 KiB of smem and
// leave one CTA (4 warps) per A100 SM.
template <int kD>
constexpr int kTile = kD <= 80 ? 32 : 16;

template <int kD>
constexpr size_t query_smem_bytes() {  // Q, dO, Uq [kRows] + K, V, Uk, Uv [2 stages][kTile]
  return size_t{3 * kRows + 8 * kTile<kD>} * kPitch<kD> * 2;
}
template <int kD>
constexpr size_t key_smem_bytes() {  // K, V, Uk, Uv [kRows] + Q, dO, Uq [2 stages][kTile] + lse, D, E, F [2][kTile]
  return size_t{4 * kRows + 6 * kTile<kD>} * kPitch<kD> * 2 + 8 * kTile<kD> * sizeof(float);
}

// The smem operands of one warp's score tiles: q, dout, uq are the query-side tiles, k, v, uk, uv the key-side ones
// (one side the warp's own 16 rows, the other the step's kN rows). uq, uk, uv are nullptr when absent.
template <typename Elem>
struct ScoreOperands {
  const Elem* q;
  const Elem* dout;
  const Elem* uq;
  const Elem* k;
  const Elem* v;
  const Elem* uk;
  const Elem* uv;
};

// One warp's score-shaped tiles [16, kN] (fp32 C fragments, unscaled): s = Q K^T, dp = dO V^T,
// a = Uq K^T + Q Uk^T, b = dO Uv^T; kTransposed computes their transposes (keys as rows), a and b stay 0 without
// their cotangents.
template <bool kTransposed, typename Elem, int kD, int kN>
__device__ __forceinline__ void score_tiles(float (&s)[kN / 8][4], float (&dp)[kN / 8][4], float (&a)[kN / 8][4],
                                            float (&b)[kN / 8][4], const ScoreOperands<Elem>& o, int lane) {
  const auto product = [lane](float(&acc)[kN / 8][4], const Elem* query_side, const Elem* key_side) {
    if constexpr (kTransposed) {
      gemm_abt<Elem, kD, kN>(acc, key_side, query_side, lane);
    } else {
      gemm_abt<Elem, kD, kN>(acc, query_side, key_side, lane);
    }
  };
  product(s, o.q, o.k);
  product(dp, o.dout, o.v);
  if (o.uq != nullptr) product(a, o.uq, o.k);
  if (o.uk != nullptr) product(a, o.q, o.uk);
  if (o.uv != nullptr) product(b, o.dout, o.uv);
}

// The cotangents of one score entry, in place: dp -> dS, a (scaled by c) -> GdP, b -> GS, from P and the entry's
// query row statistics D, E, F.
__device__ __forceinline__ void entry_cotangents(float p, float& dp, float& a, float& b, float d, float e, float f) {
  const float ds = p * (dp - d);
  b = a * ds + p * (b - f - e * dp);
  a = p * (a - e);
  dp = ds;
}

// The queries [blockIdx.x * kRows, +kRows) of head blockIdx.y, batch blockIdx.z, visiting the key tiles of their
// windows right to left. kGradients = false: row statistics E, F -> row_e, row_f; true: grad_q and grad_dout.
// Dynamic smem: query_smem_bytes<kD>().
template <typename Elem, int kD, bool kGradients>
__global__ void __launch_bounds__(kThreads, 1) swa_bwd_bwd_query_kernel(const SwaBwdBwdParams p) {
  constexpr int kP = kPitch<kD>;
  constexpr int kN = kTile<kD>;
  const Geometry geo(p);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / (static_cast<int>(p.heads_q) / static_cast<int>(p.heads_kv));
  const int m0 = blockIdx.x * kRows;
  const int rows = min(kRows, geo.seqlen_q - m0);
  const QueryBlockKeys<kN> key_blocks(geo, m0, rows);

  Elem* s_q = dynamic_smem<Elem>();  // [kRows][kP] each
  Elem* s_do = s_q + kRows * kP;
  Elem* s_uq = s_do + kRows * kP;
  Elem* s_k = s_uq + kRows * kP;  // [2][kN][kP] each
  Elem* s_v = s_k + 2 * kN * kP;
  Elem* s_uk = s_v + 2 * kN * kP;
  Elem* s_uv = s_uk + 2 * kN * kP;
  const Elem* k = head_rows<const Elem>(p.k, p.k_batch_stride, p.k_head_stride, b, hk);
  const Elem* v = head_rows<const Elem>(p.v, p.v_batch_stride, p.v_head_stride, b, hk);
  const Elem* uk = p.gdk ? head_rows<const Elem>(p.gdk, p.gdk_batch_stride, p.gdk_head_stride, b, hk) : nullptr;
  const Elem* uv = p.gdv ? head_rows<const Elem>(p.gdv, p.gdv_batch_stride, p.gdv_head_stride, b, hk) : nullptr;
  const auto load_keys = [&](int step, int stage) {
    const int n0 = key_blocks.n0(step);
    const int valid = min(kN, geo.seqlen_k - n0);
    const int at = stage * kN * kP;
    load_tile<kN, kD>(s_k + at, k + n0 * p.k_row_stride, p.k_row_stride, valid);
    load_tile<kN, kD>(s_v + at, v + n0 * p.v_row_stride, p.v_row_stride, valid);
    if (uk) load_tile<kN, kD>(s_uk + at, uk + n0 * p.gdk_row_stride, p.gdk_row_stride, valid);
    if (uv) load_tile<kN, kD>(s_uv + at, uv + n0 * p.gdv_row_stride, p.gdv_row_stride, valid);
  };
  load_tile<kRows, kD>(s_q, head_rows<const Elem>(p.q, p.q_batch_stride, p.q_head_stride, b, h) + m0 * p.q_row_stride,
                       p.q_row_stride, rows);
  load_tile<kRows, kD>(s_do,
                       head_rows<const Elem>(p.dout, p.do_batch_stride, p.do_head_stride, b, h) + m0 * p.do_row_stride,
                       p.do_row_stride, rows);
  if (p.gdq) {
    const Elem* uq = head_rows<const Elem>(p.gdq, p.gdq_batch_stride, p.gdq_head_stride, b, h);
    load_tile<kRows, kD>(s_uq, uq + m0 * p.gdq_row_stride, p.gdq_row_stride, rows);
  }

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const float scale = static_cast<float>(p.scale);
  const float scale_log2 = scale * kLog2e;
  // Statistics of rows g and g + 8 (0 past seqlen_q: those rows are not stored): lse * log2(e), D, and in the
  // gradient pass E and F.
  float lse_log2[2], d_row[2], e_row[2], f_row[2];
  const int64_t stats = (static_cast<int64_t>(b) * p.heads_q + h) * geo.seqlen_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + warp * 16 + g + 8 * r;
    const bool in = row < geo.seqlen_q;
    lse_log2[r] = in ? static_cast<const float*>(p.softmax_lse)[stats + row] * kLog2e : 0.0f;
    d_row[r] = in ? static_cast<const float*>(p.softmax_d)[stats + row] : 0.0f;
    e_row[r] = kGradients && in ? static_cast<const float*>(p.row_e)[stats + row] : 0.0f;
    f_row[r] = kGradients && in ? static_cast<const float*>(p.row_f)[stats + row] : 0.0f;
  }

  // Statistics pass: this lane's partial sums of E and F over its columns. Gradient pass: grad_q / c, grad_dout.
  float e_sum[2] = {0.0f, 0.0f}, f_sum[2] = {0.0f, 0.0f};
  float gq[kD / 8][4] = {};
  float gdo[kD / 8][4] = {};
  pipelined_steps(key_blocks.steps, load_keys, [&](int step, int stage) {
    const int n0 = key_blocks.n0(step);
    const int at = stage * kN * kP;
    const int own = warp * 16 * kP;
    const ScoreOperands<Elem> tiles{s_q + own,  s_do + own,          p.gdq ? s_uq + own : nullptr,
                                    s_k + at,   s_v + at,            uk ? s_uk + at : nullptr,
                                    uv ? s_uv + at : nullptr};
    float s[kN / 8][4] = {}, dp[kN / 8][4] = {}, a[kN / 8][4] = {}, bt[kN / 8][4] = {};
    score_tiles<false, Elem, kD, kN>(s, dp, a, bt, tiles, lane);
    const bool mask = geo.tile_needs_mask<kN>(m0, rows, n0);
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const bool hidden = mask && !geo.visible(m0 + warp * 16 + g + 8 * r, n0 + 8 * j + 2 * t + e % 2);
        const float pv = hidden ? 0.0f : exp2f(s[j][e] * scale_log2 - lse_log2[r]);
        const float av = a[j][e] * scale;
        if constexpr (kGradients) {
          s[j][e] = pv;
          a[j][e] = av;
          entry_cotangents(pv, dp[j][e], a[j][e], bt[j][e], d_row[r], e_row[r], f_row[r]);
        } else {
          e_sum[r] += pv * av;
          f_sum[r] += pv * ((dp[j][e] - d_row[r]) * av + bt[j][e]);
        }
      }
    }
    if constexpr (kGradients) {
      uint32_t op[kN / 16][4];
      to_a_operand<Elem, kN>(op, bt);
      gemm_rb<Elem, kD, kN>(gq, op, tiles.k, lane);  // GS K
      if (tiles.uk) {
        to_a_operand<Elem, kN>(op, dp);
        gemm_rb<Elem, kD, kN>(gq, op, tiles.uk, lane);  // dS Uk
      }
      if (tiles.uq || tiles.uk) {
        to_a_operand<Elem, kN>(op, a);
        gemm_rb<Elem, kD, kN>(gdo, op, tiles.v, lane);  // GdP V
      }
      if (tiles.uv) {
        to_a_operand<Elem, kN>(op, s);
        gemm_rb<Elem, kD, kN>(gdo, op, tiles.uv, lane);  // P Uv
      }
    }
  });

  if constexpr (kGradients) {
    // Staged in the warp's own Q and dO rows, which only it has read.
    const float gq_scale[2] = {scale, scale};
    const float gdo_scale[2] = {1.0f, 1.0f};
    Elem* gq_out =
        head_rows<Elem>(p.grad_q, p.gq_batch_stride, p.gq_head_stride, b, h) + (m0 + warp * 16) * p.gq_row_stride;
    Elem* gdo_out =
        head_rows<Elem>(p.grad_dout, p.gdo_batch_stride, p.gdo_head_stride, b, h) + (m0 + warp * 16) * p.gdo_row_stride;
    store_rows<Elem, kD>(gq, gq_scale, s_q + warp * 16 * kP, gq_out, p.gq_row_stride, rows - warp * 16, lane);
    store_rows<Elem, kD>(gdo, gdo_scale, s_do + warp * 16 * kP, gdo_out, p.gdo_row_stride, rows - warp * 16, lane);
  } else {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float e_total = quad_sum(e_sum[r]);
      const float f_total = quad_sum(f_sum[r]) - e_total * d_row[r];
      const int row = m0 + warp * 16 + g + 8 * r;
      if (t == 0 && row < geo.seqlen_q) {
        static_cast<float*>(p.row_e)[stats + row] = e_total;
        static_cast<float*>(p.row_f)[stats + row] = f_total;
      }
    }
  }
}

// grad_k, grad_v of the keys [blockIdx.x * kRows, +kRows) of kv head blockIdx.y, batch blockIdx.z, summed over the
// query heads of the kv head: the dk/dv kernel's walk over (query head, query block of kTile) steps, everything
// transposed (warp w owns keys 16w .. 16w + 15). Dynamic smem: key_smem_bytes<kD>().
template <typename Elem, int kD>
__global__ void __launch_bounds__(kThreads, 1) swa_bwd_bwd_key_kernel(const SwaBwdBwdParams p) {
  constexpr int kP = kPitch<kD>;
  constexpr int kM = kTile<kD>;
  const Geometry geo(p);
  const int hk = blockIdx.y;
  const int b = blockIdx.z;
  const int n0 = blockIdx.x * kRows;
  const int keys = min(kRows, geo.seqlen_k - n0);
  const KeyBlockSteps<kM> walk(geo, static_cast<int>(p.heads_q / p.heads_kv), hk, n0, keys);

  Elem* s_k = dynamic_smem<Elem>();  // [kRows][kP] each
  Elem* s_v = s_k + kRows * kP;
  Elem* s_uk = s_v + kRows * kP;
  Elem* s_uv = s_uk + kRows * kP;
  Elem* s_q = s_uv + kRows * kP;  // [2][kM][kP] each
  Elem* s_do = s_q + 2 * kM * kP;
  Elem* s_uq = s_do + 2 * kM * kP;
  float* s_stats = reinterpret_cast<float*>(s_uq + 2 * kM * kP);  // [2][lse, D, E, F][kM]

  // Q, dout, Uq and the row statistics of a step's query block into `stage`; rows past seqlen_q are zero-filled, so
  // their P = exp2(0 - 0) = 1 meets zero dout, Q, Uq, D, E, F: every cotangent of theirs is exactly 0.
  const auto load_step = [&](int step, int stage) {
    const int h = walk.head(step);
    const int m0 = walk.m0(step);
    const int rows = min(kM, geo.seqlen_q - m0);
    const int at = stage * kM * kP;
    load_tile<kM, kD>(s_q + at,
                      head_rows<const Elem>(p.q, p.q_batch_stride, p.q_head_stride, b, h) + m0 * p.q_row_stride,
                      p.q_row_stride, rows);
    load_tile<kM, kD>(s_do + at,
                      head_rows<const Elem>(p.dout, p.do_batch_stride, p.do_head_stride, b, h) + m0 * p.do_row_stride,
                      p.do_row_stride, rows);
    if (p.gdq) {
      const Elem* uq = head_rows<const Elem>(p.gdq, p.gdq_batch_stride, p.gdq_head_stride, b, h);
      load_tile<kM, kD>(s_uq + at, uq + m0 * p.gdq_row_stride, p.gdq_row_stride, rows);
    }
    const int64_t stats = (static_cast<int64_t>(b) * p.heads_q + h) * geo.seqlen_q + m0;
#pragma unroll
    for (int i = threadIdx.x; i < 4 * kM; i += kThreads) {
      const int r = i % kM;
      const int which = i / kM;
      const void* src = which == 0 ? p.softmax_lse : which == 1 ? p.softmax_d : which == 2 ? p.row_e : p.row_f;
      const bool in = r < rows;
      arch::cp_async_ca<4>(s_stats + stage * 4 * kM + i, static_cast<const float*>(src) + (in ? stats + r : 0),
                           in ? 4 : 0);
    }
  };

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int own = warp * 16 * kP;
  const float scale = static_cast<float>(p.scale);
  const float scale_log2 = scale * kLog2e;

  float gk[kD / 8][4] = {};  // grad_k / c
  float gv[kD / 8][4] = {};
  if (walk.steps > 0) {  // a key block no query sees stores zeros
    const Elem* k = head_rows<const Elem>(p.k, p.k_batch_stride, p.k_head_stride, b, hk);
    const Elem* v = head_rows<const Elem>(p.v, p.v_batch_stride, p.v_head_stride, b, hk);
    load_tile<kRows, kD>(s_k, k + n0 * p.k_row_stride, p.k_row_stride, keys);
    load_tile<kRows, kD>(s_v, v + n0 * p.v_row_stride, p.v_row_stride, keys);
    if (p.gdk) {
      const Elem* uk = head_rows<const Elem>(p.gdk, p.gdk_batch_stride, p.gdk_head_stride, b, hk);
      load_tile<kRows, kD>(s_uk, uk + n0 * p.gdk_row_stride, p.gdk_row_stride, keys);
    }
    if (p.gdv) {
      const Elem* uv = head_rows<const Elem>(p.gdv, p.gdv_batch_stride, p.gdv_head_stride, b, hk);
      load_tile<kRows, kD>(s_uv, uv + n0 * p.gdv_row_stride, p.gdv_row_stride, keys);
    }
  }
  pipelined_steps(walk.steps, load_step, [&](int step, int stage) {
    const int m0 = walk.m0(step);
    const int at = stage * kM * kP;
    const float* lse = s_stats + stage * 4 * kM;
    const float* dd = lse + kM;
    const float* ee = dd + kM;
    const float* ff = ee + kM;
    const ScoreOperands<Elem> tiles{s_q + at,  s_do + at,           p.gdq ? s_uq + at : nullptr,
                                    s_k + own, s_v + own,           p.gdk ? s_uk + own : nullptr,
                                    p.gdv ? s_uv + own : nullptr};
    // Transposed tiles [16 keys, kM queries].
    float s[kM / 8][4] = {}, dp[kM / 8][4] = {}, a[kM / 8][4] = {}, bt[kM / 8][4] = {};
    score_tiles<true, Elem, kD, kM>(s, dp, a, bt, tiles, lane);
    const bool mask = geo.tile_needs_mask<kRows>(m0, min(kM, geo.seqlen_q - m0), n0);
#pragma unroll
    for (int j = 0; j < kM / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * t + e % 2;
        const bool hidden = mask && !geo.visible(m0 + col, n0 + warp * 16 + g + e / 2 * 8);
        const float pv = hidden ? 0.0f : exp2f(s[j][e] * scale_log2 - lse[col] * kLog2e);
        a[j][e] *= scale;
        entry_cotangents(pv, dp[j][e], a[j][e], bt[j][e], dd[col], ee[col], ff[col]);
      }
    }
    uint32_t op[kM / 16][4];
    to_a_operand<Elem, kM>(op, bt);
    gemm_rb<Elem, kD, kM>(gk, op, tiles.q, lane);  // GS^T Q
    if (tiles.uq) {
      to_a_operand<Elem, kM>(op, dp);
      gemm_rb<Elem, kD, kM>(gk, op, tiles.uq, lane);  // dS^T Uq
    }
    if (tiles.uq || tiles.uk) {
      to_a_operand<Elem, kM>(op, a);
      gemm_rb<Elem, kD, kM>(gv, op, tiles.dout, lane);  // GdP^T dO
    }
  });

  // Staged in the warp's own K and V rows, which only it has read.
  const float gk_scale[2] = {scale, scale};
  const float gv_scale[2] = {1.0f, 1.0f};
  Elem* gk_out =
      head_rows<Elem>(p.grad_k, p.gk_batch_stride, p.gk_head_stride, b, hk) + (n0 + warp * 16) * p.gk_row_stride;
  Elem* gv_out =
      head_rows<Elem>(p.grad_v, p.gv_batch_stride, p.gv_head_stride, b, hk) + (n0 + warp * 16) * p.gv_row_stride;
  store_rows<Elem, kD>(gk, gk_scale, s_k + own, gk_out, p.gk_row_stride, keys - warp * 16, lane);
  store_rows<Elem, kD>(gv, gv_scale, s_v + own, gv_out, p.gv_row_stride, keys - warp * 16, lane);
}

}  // namespace

void swa_bwd_bwd(const SwaBwdBwdParams& p, void* stream) {
  const char* op = "swa_bwd_bwd";
  check_supported(op, p);
  check_rows_aligned(op, "dout", p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  if (p.gdq) check_rows_aligned(op, "gdq", p.gdq, p.gdq_batch_stride, p.gdq_row_stride, p.gdq_head_stride);
  if (p.gdk) check_rows_aligned(op, "gdk", p.gdk, p.gdk_batch_stride, p.gdk_row_stride, p.gdk_head_stride);
  if (p.gdv) check_rows_aligned(op, "gdv", p.gdv, p.gdv_batch_stride, p.gdv_row_stride, p.gdv_head_stride);
  check_rows_aligned(op, "grad_q", p.grad_q, p.gq_batch_stride, p.gq_row_stride, p.gq_head_stride);
  check_rows_aligned(op, "grad_k", p.grad_k, p.gk_batch_stride, p.gk_row_stride, p.gk_head_stride);
  check_rows_aligned(op, "grad_v", p.grad_v, p.gv_batch_stride, p.gv_row_stride, p.gv_head_stride);
  check_rows_aligned(op, "grad_dout", p.grad_dout, p.gdo_batch_stride, p.gdo_row_stride, p.gdo_head_stride);
  if ((p.softmax_d == nullptr || p.row_e == nullptr || p.row_f == nullptr) && p.batch * p.heads_q * p.seqlen_q > 0) {
    throw std::runtime_error(
        "swa_bwd_bwd (CUDA): softmax_d, row_e and row_f must point to float32 [batch, heads_q, seqlen_q] workspaces");
  }
  if (p.batch == 0 || p.heads_q == 0 || p.seqlen_k == 0) return;
  dispatch(p, [&](auto elem, auto head_dim) {
    using Elem = decltype(elem);
    constexpr int kD = decltype(head_dim)::value;
    if (p.seqlen_q > 0) {
      const dim3 query_grid = grid_of(p.seqlen_q, kRows, p.heads_q, p.batch);
      launch(swa_bwd_dot_do_o_kernel<Elem>, grid_of(p.batch * p.seqlen_q * p.heads_q, kThreads / 16, 1, 1),
             dim3(kThreads), 0, stream, static_cast<const SwaParams&>(p));
      launch(swa_bwd_bwd_query_kernel<Elem, kD, false>, query_grid, dim3(kThreads), query_smem_bytes<kD>(), stream,
             p);
      launch(swa_bwd_bwd_query_kernel<Elem, kD, true>, query_grid, dim3(kThreads), query_smem_bytes<kD>(), stream,
             p);
    }
    // Key blocks no query sees (seqlen_q < seqlen_k) still get their zero grad_k, grad_v written.
    launch(swa_bwd_bwd_key_kernel<Elem, kD>, grid_of(p.seqlen_k, kRows, p.heads_kv, p.batch), dim3(kThreads),
           key_smem_bytes<kD>(), stream, p);
  });
}

}  // namespace ttt::TTT_CUDA_NS
