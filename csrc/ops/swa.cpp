// torch glue of the fused sliding-window attention kernels (math and params: include/ttt_kernels/swa.h):
//
//   swa_fwd(q, k, v, window, scale) -> (out, lse)
//   swa_bwd(dout, q, k, v, out, lse, window, scale) -> (dq, dk, dv)
// q, out, dout, dq [batch, seqlen_q, heads_q, head_dim]; k, v, dk, dv [batch, seqlen_k, heads_kv, head_dim]; lse
// [batch, heads_q, seqlen_q] float32 (float64 for float64 inputs). Any strides with a contiguous head_dim; outputs
// are contiguous. Autograd, fake tensors and the Python API are in python/ttt_kernels/ops/swa.py.
//
// check_* and set_params are backend-independent: an implementation for another device checks, allocates its
// outputs and workspaces, calls set_params / set_bwd_params and launches its kernel, as the CPU functions below do.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "common.h"
#include "ttt_kernels/swa.h"

#if defined(TTT_KERNELS_WITH_SIM)
#include "ttt_kernels/sim/config.h"
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ttt {
namespace {

using ops::to_dtype;

// t has q's dtype and device and a contiguous last dimension.
void check_like_q(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " must have q's dtype ", q.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), op, ": ", name, " must be on q's device ", q.device(), ", got ", t.device());
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, op, ": ", name,
              " must have a contiguous last dimension (head_dim), got strides ", t.strides());
}

void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window,
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

void check_bwd_inputs(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& out, const at::Tensor& lse, int64_t window, double scale) {
  const char* op = "swa_bwd";
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

// The fields both directions share (out and lse: written by the forward, read by the backward).
void set_params(SwaParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                const at::Tensor& lse, int64_t window, double scale) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.softmax_lse = lse.data_ptr();
  p.q_batch_stride = q.stride(0);
  p.q_row_stride = q.stride(1);
  p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0);
  p.k_row_stride = k.stride(1);
  p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0);
  p.v_row_stride = v.stride(1);
  p.v_head_stride = v.stride(2);
  p.o_batch_stride = out.stride(0);
  p.o_row_stride = out.stride(1);
  p.o_head_stride = out.stride(2);
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

// The backward's own tensors; workspaces (softmax_d, dq_accum) are the backend's.
void set_bwd_params(SwaParams& p, const at::Tensor& dout, const at::Tensor& dq, const at::Tensor& dk,
                    const at::Tensor& dv) {
  p.dout = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.do_batch_stride = dout.stride(0);
  p.do_row_stride = dout.stride(1);
  p.do_head_stride = dout.stride(2);
  p.dq_batch_stride = dq.stride(0);
  p.dq_row_stride = dq.stride(1);
  p.dq_head_stride = dq.stride(2);
  p.dk_batch_stride = dk.stride(0);
  p.dk_row_stride = dk.stride(1);
  p.dk_head_stride = dk.stride(2);
  p.dv_batch_stride = dv.stride(0);
  p.dv_row_stride = dv.stride(1);
  p.dv_head_stride = dv.stride(2);
}

// ---- CUDA kernels: on a GPU, or in the simulator on CPU tensors ---------------------------------------------------
#if defined(TTT_KERNELS_WITH_SIM) || defined(TTT_KERNELS_WITH_CUDA)

// The CUDA kernels move rows in 16-byte chunks: a tensor whose data pointer or batch, row or head stride is not a
// multiple of 16 bytes is copied into a fresh contiguous one. (Unsupported dtypes and head dims pass through and are
// rejected by the launcher.)
at::Tensor with_aligned_rows(const at::Tensor& t) {
  const int64_t elem = t.element_size();
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d < 3; ++d) aligned = aligned && t.stride(d) * elem % 16 == 0;
  return aligned ? t : at::empty(t.sizes(), t.options()).copy_(t);
}

// Checks the arguments, allocates out and lse, fills the params and runs launch(params) (a CUDA launcher).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> swa_fwd_device(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, int64_t window, double scale,
                                                  Launch&& launch) {
  check_inputs("swa_fwd", q_in, k_in, v_in, window, scale);
  const at::Tensor q = with_aligned_rows(q_in);
  const at::Tensor k = with_aligned_rows(k_in);
  const at::Tensor v = with_aligned_rows(v_in);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse =
      at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(ops::stats_dtype(q.scalar_type())));
  SwaParams params;
  set_params(params, q, k, v, out, lse, window, scale);
  launch(params);
  return {out, lse};
}

// Checks the arguments, allocates dq, dk, dv and the softmax_d workspace (D = rowsum(dout * out), lse's shape and
// dtype), fills the params and runs launch(params).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> swa_bwd_device(const at::Tensor& dout_in, const at::Tensor& q_in,
                                                              const at::Tensor& k_in, const at::Tensor& v_in,
                                                              const at::Tensor& out_in, const at::Tensor& lse,
                                                              int64_t window, double scale, Launch&& launch) {
  check_bwd_inputs(dout_in, q_in, k_in, v_in, out_in, lse, window, scale);
  const at::Tensor dout = with_aligned_rows(dout_in);
  const at::Tensor q = with_aligned_rows(q_in);
  const at::Tensor k = with_aligned_rows(k_in);
  const at::Tensor v = with_aligned_rows(v_in);
  const at::Tensor out = with_aligned_rows(out_in);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  SwaParams params;
  set_params(params, q, k, v, out, lse, window, scale);
  set_bwd_params(params, dout, dq, dk, dv);
  const at::Tensor softmax_d = at::empty(lse.sizes(), lse.options());
  params.softmax_d = softmax_d.data_ptr();
  launch(params);
  return {dq, dk, dv};
}
#endif

// ---- CPU kernels -----------------------------------------------------------------------------------------------

// The CPU kernels compute in float32 or float64: 16-bit inputs are widened to float32 here and the results
// narrowed back (lse stays float32).
bool is_16bit(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf; }

std::tuple<at::Tensor, at::Tensor> swa_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               int64_t window, double scale) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) {
    return swa_fwd_device(q, k, v, window, scale,
                          [](const SwaParams& params) { cuda_sim::swa_fwd(params, /*stream=*/nullptr); });
  }
#endif
  check_inputs("swa_fwd", q, k, v, window, scale);
  if (is_16bit(q)) {
    auto [out, lse] = swa_fwd_cpu(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), window, scale);
    return {out.to(q.scalar_type()), lse};
  }
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse =
      at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(ops::stats_dtype(q.scalar_type())));
  SwaParams params;
  set_params(params, q, k, v, out, lse, window, scale);
  cpu::swa_fwd(params);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> swa_bwd_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                           const at::Tensor& k, const at::Tensor& v,
                                                           const at::Tensor& out, const at::Tensor& lse,
                                                           int64_t window, double scale) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) {
    return swa_bwd_device(dout, q, k, v, out, lse, window, scale,
                          [](const SwaParams& params) { cuda_sim::swa_bwd(params, /*stream=*/nullptr); });
  }
#endif
  check_bwd_inputs(dout, q, k, v, out, lse, window, scale);
  if (is_16bit(q)) {
    const auto widen = [](const at::Tensor& t) { return t.to(at::kFloat); };
    auto [dq, dk, dv] = swa_bwd_cpu(widen(dout), widen(q), widen(k), widen(v), widen(out), lse, window, scale);
    return {dq.to(q.scalar_type()), dk.to(q.scalar_type()), dv.to(q.scalar_type())};
  }
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  SwaParams params;
  set_params(params, q, k, v, out, lse, window, scale);
  set_bwd_params(params, dout, dq, dk, dv);
  // Workspaces in the lse dtype: D = rowsum(dout * out) [batch, heads_q, seqlen_q] and the dq partial sums.
  const at::Tensor softmax_d = at::empty(lse.sizes(), lse.options());
  const at::Tensor dq_accum = at::empty({cpu::swa_bwd_dq_accum_elems(params)}, lse.options());
  params.softmax_d = softmax_d.data_ptr();
  params.dq_accum = dq_accum.data_ptr();
  cpu::swa_bwd(params);
  return {dq, dk, dv};
}

#if defined(TTT_KERNELS_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor> swa_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                int64_t window, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  return swa_fwd_device(q, k, v, window, scale, [](const SwaParams& params) {
    cuda::swa_fwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> swa_bwd_cuda(const at::Tensor& dout, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            int64_t window, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  // softmax_d is freed on return while the kernels may still run: safe, the caching allocator reuses it only for
  // work queued later on this stream.
  return swa_bwd_device(dout, q, k, v, out, lse, window, scale, [](const SwaParams& params) {
    cuda::swa_bwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}
#endif

}  // namespace
}  // namespace ttt

TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def("swa_fwd(Tensor q, Tensor k, Tensor v, int window, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "swa_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int window, float scale) -> "
      "(Tensor dq, Tensor dk, Tensor dv)");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) {
  m.impl("swa_fwd", &ttt::swa_fwd_cpu);
  m.impl("swa_bwd", &ttt::swa_bwd_cpu);
}

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("swa_fwd", &ttt::swa_fwd_cuda);
  m.impl("swa_bwd", &ttt::swa_bwd_cuda);
}
#endif
