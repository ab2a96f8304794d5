// Double backward of fused causal sliding-window attention (derivation: docs/swa_bwd_bwd.md).
//
// The backward (include/ttt_kernels/swa.h) maps (q, k, v, dout) to (dq, dk, dv). Its backward takes cotangents
// (gdq like q, gdk and gdv like k; any of them may be absent = zero) and returns the total derivatives of
//   L = <gdq, dq> + <gdk, dk> + <gdv, dv>
// w.r.t. q, k, v (out and lse counted as the functions of q, k, v they are) and dout. Per (batch, query head), with
// c = scale, s = c q k^T (masked), P = exp(s - lse), g = dout, u_q = gdq, u_k = gdk, u_v = gdv (kv head rows):
//
//   dP = g v^T,  D_i = g_i . out_i,  dS = P * (dP - D)                       (the backward's own quantities)
//   A  = c (u_q k^T + q u_k^T),  B = g u_v^T                                  (cotangents of dS and P)
//   E_i = sum_j P_ij A_ij,  F_i = sum_j (dS_ij A_ij + P_ij B_ij) - E_i D_i     (row statistics, first pass)
//   GdP = P * (A - E),  GS = P * (A * (dP - D) - E dP + B - F)                (cotangents of dP and s)
//   grad_q    = c (GS k + dS u_k)       grad_k = c (GS^T q + dS^T u_q)         (summed over a kv head's query heads)
//   grad_v    = GdP^T g                 grad_dout = GdP v + P u_v
//
// Every product runs over the window's entries only (work O(seqlen * window), no seqlen^2 tensor): a first pass
// computes D, E, F per query row, a second recomputes P, dP, A, B tile by tile and accumulates the four gradients.
#pragma once

#include <cstdint>

#include "ttt_kernels/swa.h"

namespace ttt {

// SwaParams' q, k, v, out, softmax_lse, dout (and their strides), sizes, window, scale and dtype are the inputs;
// its dq, dk, dv fields are unused.
struct SwaBwdBwdParams : SwaParams {
  // Cotangents of the backward's outputs, nullptr when absent (zero): gdq like q, gdk and gdv like k.
  const void* gdq = nullptr;
  int64_t gdq_batch_stride = 0, gdq_row_stride = 0, gdq_head_stride = 0;
  const void* gdk = nullptr;
  int64_t gdk_batch_stride = 0, gdk_row_stride = 0, gdk_head_stride = 0;
  const void* gdv = nullptr;
  int64_t gdv_batch_stride = 0, gdv_row_stride = 0, gdv_head_stride = 0;
  // Outputs: grad_q and grad_dout like q, grad_k and grad_v like k.
  void* grad_q = nullptr;
  int64_t gq_batch_stride = 0, gq_row_stride = 0, gq_head_stride = 0;
  void* grad_k = nullptr;
  int64_t gk_batch_stride = 0, gk_row_stride = 0, gk_head_stride = 0;
  void* grad_v = nullptr;
  int64_t gv_batch_stride = 0, gv_row_stride = 0, gv_head_stride = 0;
  void* grad_dout = nullptr;
  int64_t gdo_batch_stride = 0, gdo_row_stride = 0, gdo_head_stride = 0;
  // Scratch of the lse type [batch, heads_q, seqlen_q] each, provided by the caller: SwaParams::softmax_d receives
  // D, row_e and row_f the statistics E and F. The CPU kernel also needs SwaParams::dq_accum
  // (cpu::swa_bwd_bwd_workspace_bytes(params) bytes).
  void* row_e = nullptr;
  void* row_f = nullptr;
};

// CPU kernel, float32 and float64 (math in the tensor dtype), any head_dim. Pass 1 splits (batch, query head,
// query tile) over threads; pass 2 splits (batch, kv head, chunk of key tiles) as the backward does, with the
// partial grad_q and grad_dout of later query tiles left in dq_accum and added in chunk order, so results are
// bitwise reproducible for any number of threads.
namespace cpu {
int64_t swa_bwd_bwd_workspace_bytes(const SwaBwdBwdParams& params);
void swa_bwd_bwd(const SwaBwdBwdParams& params);
}  // namespace cpu

// CUDA kernels (csrc/cuda/swa_bwd_bwd.cu): the same dtypes, head dims and alignment as cuda::swa_bwd, and the
// same errors. Absent cotangents are skipped, not read.
namespace cuda {
void swa_bwd_bwd(const SwaBwdBwdParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void swa_bwd_bwd(const SwaBwdBwdParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
