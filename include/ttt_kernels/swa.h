// Fused causal sliding-window attention (SWA), FlashAttention layout and semantics:
//
//   q [batch, seqlen_q, heads_q, head_dim], k and v [batch, seqlen_k, heads_kv, head_dim], seqlen_q <= seqlen_k.
//   GQA/MQA: heads_q is a multiple of heads_kv; query head h reads kv head h / (heads_q / heads_kv).
//   The queries are the last seqlen_q positions: query i sits at t = i + seqlen_k - seqlen_q and attends to the keys
//   t - window + 1 .. t (FlashAttention window_size = (window - 1, 0); window >= seqlen_k is plain causal attention).
//
//   Forward:   S = scale * q k^T (masked),  lse = logsumexp_j S,  out = exp(S - lse) v
//   Backward:  P = exp(S - lse),  D = rowsum(dout * out),  dS = P * (dout v^T - D),
//              dv = P^T dout,  dk = scale * dS^T q,  dq = scale * dS k
//
// Torch-free: the kernels (csrc/cpu/swa.cpp, CUDA kernels) see only this header; csrc/ops/swa.cpp fills the params
// from tensors (one set_params for every backend).
#pragma once

#include <cstdint>

#include "ttt_kernels/dtype.h"

namespace ttt {

struct SwaParams {
  // Activations [batch, seqlen, heads, head_dim]: head_dim is contiguous, the other strides are in elements (any
  // non-negative values; a [batch, seqlen, 3, heads, head_dim] packed qkv tensor works without a copy).
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  // Written by the forward, read by the backward: [batch, seqlen_q, heads_q, head_dim].
  void* out = nullptr;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  // [batch, heads_q, seqlen_q], contiguous: logsumexp (natural log) of each row of S. Written by the forward, read
  // by the backward. float32, float64 when dtype is kFloat64.
  void* softmax_lse = nullptr;

  // Backward only. dout like out, dq like q, dk and dv like k (dk/dv sum over the heads_q / heads_kv query heads
  // that share a kv head).
  const void* dout = nullptr;
  int64_t do_batch_stride = 0, do_row_stride = 0, do_head_stride = 0;
  void* dq = nullptr;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  void* dk = nullptr;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  void* dv = nullptr;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  // Scratch of the lse type, provided by the caller: softmax_d [batch, heads_q, seqlen_q] receives D; dq_accum
  // holds dq partial sums (cpu::swa_bwd_workspace_bytes(params) bytes).
  void* softmax_d = nullptr;
  void* dq_accum = nullptr;

  int64_t batch = 0;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;
  int64_t heads_q = 0;
  int64_t heads_kv = 0;
  int64_t head_dim = 0;
  int64_t window = 0;  // >= 1
  double scale = 0.0;  // softmax scale, usually 1 / sqrt(head_dim)
  DType dtype = DType::kFloat32;  // of q, k, v, out, dout, dq, dk, dv
};

// CPU kernels: float32 and float64 tensors (16-bit inputs are widened by the caller), math in the tensor dtype.
// Tiles of 48 queries x 48 keys; key tiles outside every query's window are never visited (work O(seqlen * window)).
// The forward splits (batch, head, query tile) over threads. The backward splits (batch, kv head, chunk of key
// tiles): each task owns its dk/dv rows and the dq of the query tiles at its own keys, and leaves its contributions
// to later query tiles in dq_accum, which a last pass adds to dq in chunk order. The chunking depends only on the
// sizes, so results are bitwise reproducible for any number of threads.
namespace cpu {
void swa_fwd(const SwaParams& params);
int64_t swa_bwd_workspace_bytes(const SwaParams& params);
void swa_bwd(const SwaParams& params);
}  // namespace cpu

// CUDA kernels and their launchers (csrc/cuda/swa.cu, docs/swa.md), compiled by nvcc (ttt::cuda: `stream` is a
// cudaStream_t) and for the CUDA simulator (ttt::cuda_sim: `stream` is ignored). bfloat16 and float16 tensors
// (fp32 accumulation, lse and softmax_d float32), head_dim 64, 80, 96 or 128, seqlen_k <= 2^30, every tensor's rows
// 16-byte aligned (base pointer and batch, row and head strides multiples of 8 elements). swa_bwd needs softmax_d
// and no dq_accum: dq is computed per query block, without atomics, so every result is bitwise reproducible. They
// throw std::runtime_error naming the op and the argument on anything else, and on a failed launch.
namespace cuda {
void swa_fwd(const SwaParams& params, void* stream);
void swa_bwd(const SwaParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void swa_fwd(const SwaParams& params, void* stream);
void swa_bwd(const SwaParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
