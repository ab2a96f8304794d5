// Argument checks and params filling shared by the sliding-window attention ops (csrc/ops/swa.cpp,
// csrc/ops/swa_bwd_bwd.cpp), for every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <array>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "ttt_kernels/swa.h"

namespace ttt::swa_glue {

using ops::to_dtype;

// t has q's dtype and device and a contiguous last dimension.
inline void check_like_q(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " must have q's dtype ", q.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), op, ": ", name, " must be on q's device ", q.device(), ", got ", t.device());
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, op, ": ", name,
              " must have a contiguous last dimension (head_dim), got strides ", t.strides());
}

inline void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window,
                  double scale) {
  TORCH_CHECK(q.dim() == 4, op, ": q must have 4 dimensions (batch, seqlen_q, heads_q, head_dim), got shape ",
              q.sizes());
  TORCH_CHECK(k.dim() == 4, op, ": k must have 4 dimensions (batch, seqlen_k, heads_kv, head_dim), got shape ",
              k.sizes());
  to_dtype(op, "q", q.scalar_type());
  check_like_q(op, "q", q, q);
  check_like_q(op, "k", k, q);
  check_like_q(op, "v", v, q);
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0), op, ": k must have q's batch size ", q.size(0), ", got ", k.size(0));
  TORCH_CHECK(k.size(3) == q.size(3), op, ": k must have q's head_dim ", q.size(3), ", got ", k.size(3));
  TORCH_CHECK(q.size(3) >= 1, op, ": head_dim must be >= 1, got shape ", q.sizes());
  TORCH_CHECK(q.size(1) <= k.size(1), op, ": q must not have more positions than k (the queries are the last ",
              "seqlen_q of the seqlen_k positions), got seqlen_q ", q.size(1), " > seqlen_k ", k.size(1));
  TORCH_CHECK(k.size(2) >= 1 && q.size(2) >= 1 && q.size(2) % k.size(2) == 0, op,
              ": heads_q must be a positive multiple of heads_kv (GQA/MQA), got heads_q ", q.size(2), ", heads_kv ",
              k.size(2));
  TORCH_CHECK(window >= 1, op, ": window must be >= 1 (keys t - window + 1 .. t), got ", window);
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
}

// The inputs of the backward (and of its backward): the forward's, its outputs out and lse, and dout.
inline void check_bwd_inputs(const char* op, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, int64_t window,
                             double scale) {
  check_inputs(op, q, k, v, window, scale);
  check_like_q(op, "dout", dout, q);
  check_like_q(op, "out", out, q);
  TORCH_CHECK(dout.sizes() == q.sizes(), op, ": dout must have q's shape ", q.sizes(), ", got ", dout.sizes());
  TORCH_CHECK(out.sizes() == q.sizes(), op, ": out must have q's shape ", q.sizes(), ", got ", out.sizes());
  const std::array<int64_t, 3> lse_sizes{q.size(0), q.size(2), q.size(1)};
  const at::IntArrayRef lse_shape(lse_sizes);
  TORCH_CHECK(lse.sizes() == lse_shape, op, ": lse must have shape ", lse_shape, " (batch, heads_q, seqlen_q), got ",
              lse.sizes());
  const at::ScalarType lse_dtype = ops::stats_dtype(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == lse_dtype, op, ": lse must be ", lse_dtype,
              " for ", q.scalar_type(), " inputs, got ", lse.scalar_type());
  TORCH_CHECK(lse.device() == q.device(), op, ": lse must be on q's device ", q.device(), ", got ", lse.device());
  TORCH_CHECK(lse.is_contiguous(), op, ": lse must be contiguous, got strides ", lse.strides());
}

// A [batch, seqlen, heads, head_dim] tensor's data pointer and element strides, into a params struct's fields.
template <typename Ptr>
void set_rows(Ptr& ptr, int64_t& batch_stride, int64_t& row_stride, int64_t& head_stride, const at::Tensor& t) {
  ptr = t.data_ptr();
  batch_stride = t.stride(0);
  row_stride = t.stride(1);
  head_stride = t.stride(2);
}

// The fields every direction shares (out and lse: written by the forward, read by the backwards).
inline void set_params(SwaParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& out, const at::Tensor& lse, int64_t window, double scale) {
  set_rows(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, q);
  set_rows(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, k);
  set_rows(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, v);
  set_rows(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, out);
  p.softmax_lse = lse.data_ptr();
  p.batch = q.size(0);
  p.seqlen_q = q.size(1);
  p.seqlen_k = k.size(1);
  p.heads_q = q.size(2);
  p.heads_kv = k.size(2);
  p.head_dim = q.size(3);
  p.window = window;
  p.scale = scale;
  p.dtype = to_dtype("swa", "q", q.scalar_type());
}

// The CUDA kernels move rows in 16-byte chunks: a tensor whose data pointer or batch, row or head stride is not a
// multiple of 16 bytes is copied into a fresh contiguous one. (Unsupported dtypes and head dims pass through and are
// rejected by the launcher.)
inline at::Tensor with_aligned_rows(const at::Tensor& t) {
  const int64_t elem = t.element_size();
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d < 3; ++d) aligned = aligned && t.stride(d) * elem % 16 == 0;
  return aligned ? t : at::empty(t.sizes(), t.options()).copy_(t);
}

// The CPU kernels compute in float32 or float64: 16-bit inputs are widened to float32 by the glue and the results
// narrowed back (lse stays float32).
inline bool is_16bit(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

}  // namespace ttt::swa_glue
