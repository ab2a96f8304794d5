// torch glue of the fused sliding-window attention kernels (math and params: include/ttt_kernels/swa.h):
//
//   swa_fwd(q, k, v, window, scale) -> (out, lse)
//   swa_bwd(dout, q, k, v, out, lse, window, scale) -> (dq, dk, dv)
// q, out, dout, dq [batch, seqlen_q, heads_q, head_dim]; k, v, dk, dv [batch, seqlen_k, heads_kv, head_dim]; lse
// [batch, heads_q, seqlen_q] float32 (float64 for float64 inputs). Any strides with a contiguous head_dim; outputs
// are contiguous. The autograd formulas are at the end of this file (swa_fwd's backward is swa_bwd, swa_bwd's is
// swa_bwd_bwd: csrc/ops/swa_bwd_bwd.cpp); fake tensors and the Python API are in python/ttt_kernels/ops/swa.py.
//
// The checks and set_params (swa_glue.h) and set_bwd_params are backend-independent: an implementation for another
// device checks, allocates its outputs and workspaces, fills the params and launches its kernel, as the CPU functions
// below do.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "autograd.h"
#include "swa_glue.h"
#include "ttt_kernels/swa.h"

namespace ttt {
namespace {

using namespace swa_glue;

// The backward's own tensors; workspaces (softmax_d, dq_accum) are the backend's.
void set_bwd_params(SwaParams& p, const at::Tensor& dout, const at::Tensor& dq, const at::Tensor& dk,
                    const at::Tensor& dv) {
  set_rows(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, dout);
  set_rows(p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, dq);
  set_rows(p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, dk);
  set_rows(p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, dv);
}

// ---- CUDA kernels: on a GPU, or in the simulator on CPU tensors ---------------------------------------------------
#if defined(TTT_KERNELS_WITH_SIM) || defined(TTT_KERNELS_WITH_CUDA)

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
  const ops::SimBuffers buffers{{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"lse", lse}};
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
  check_bwd_inputs("swa_bwd", dout_in, q_in, k_in, v_in, out_in, lse, window, scale);
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
  const ops::SimBuffers buffers{{"dout", dout}, {"q", q},   {"k", k},   {"v", v},   {"out", out},
                                {"lse", lse},   {"dq", dq}, {"dk", dk}, {"dv", dv}, {"softmax_d", softmax_d}};
  launch(params);
  return {dq, dk, dv};
}
#endif

// ---- CPU kernels -----------------------------------------------------------------------------------------------

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
  check_bwd_inputs("swa_bwd", dout, q, k, v, out, lse, window, scale);
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
  const at::Tensor dq_accum = ops::workspace(cpu::swa_bwd_workspace_bytes(params), lse);
  params.softmax_d = softmax_d.data_ptr();
  params.dq_accum = dq_accum.data_ptr();
  cpu::swa_bwd(params);
  return {dq, dk, dv};
}

#if defined(TTT_KERNELS_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor> swa_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                int64_t window, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const ops::NvtxRange range("swa_fwd", ' ', q.scalar_type(), " hd", q.size(3), " w", window);
  return swa_fwd_device(q, k, v, window, scale, [](const SwaParams& params) {
    cuda::swa_fwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> swa_bwd_cuda(const at::Tensor& dout, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            int64_t window, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const ops::NvtxRange range("swa_bwd", ' ', q.scalar_type(), " hd", q.size(3), " w", window);
  // softmax_d is freed on return while the kernels may still run: safe, the caching allocator reuses it only for
  // work queued later on this stream.
  return swa_bwd_device(dout, q, k, v, out, lse, window, scale, [](const SwaParams& params) {
    cuda::swa_bwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}
#endif

// ---- autograd ------------------------------------------------------------------------------------------------------
// (csrc/ops/autograd.h says why these are C++.)
using ops::AutogradContext;
using ops::variable_list;

using SwaBwdSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&, int64_t,
                                                                       double);

// The kernels take any strides with a contiguous head_dim.
at::Tensor inner_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// swa_fwd(q, k, v, window, scale) -> (out, lse): the backward is swa_bwd; lse is not differentiable.
struct SwaFwdFunction : torch::autograd::Function<SwaFwdFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               int64_t window, double scale) {
    static const auto op = ops::op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double)>("ttt_kernels::swa_fwd");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = op.call(q, k, v, window, scale);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["window"] = window;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);  // no zero tensor for lse's (or an unused output's) cotangent
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = ops::op_handle<SwaBwdSignature>("ttt_kernels::swa_bwd");
    variable_list result(5);  // q, k, v, window, scale
    if (!grads[0].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();  // q, k, v, out, lse
    std::tie(result[0], result[1], result[2]) =
        bwd.call(inner_contiguous(grads[0]), saved[0], saved[1], saved[2], saved[3], saved[4],
                 ctx->saved_data["window"].toInt(), ctx->saved_data["scale"].toDouble());
    return result;
  }
};

// swa_bwd(dout, q, k, v, out, lse, window, scale) -> (dq, dk, dv): the vector-Jacobian product is swa_bwd_bwd. out
// and lse get no gradient: swa_bwd_bwd counts them as the functions of q, k and v that swa_fwd computes (exact
// whenever they are swa_fwd's outputs, as in swa_fwd's backward, the only caller autograd sees).
struct SwaBwdFunction : torch::autograd::Function<SwaBwdFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, int64_t window,
                               double scale) {
    static const auto op = ops::op_handle<SwaBwdSignature>("ttt_kernels::swa_bwd");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dq, dk, dv] = op.call(dout, q, k, v, out, lse, window, scale);
    ctx->save_for_backward({dout, q, k, v, out, lse});
    ctx->saved_data["window"] = window;
    ctx->saved_data["scale"] = scale;
    // Cotangents of outputs that do not reach the loss stay undefined (not zero tensors): the kernels skip them.
    ctx->set_materialize_grads(false);
    return {dq, dk, dv};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using OptTensor = std::optional<at::Tensor>;
    static const auto bwd_bwd = ops::op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const OptTensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double)>("ttt_kernels::swa_bwd_bwd");
    variable_list result(8);  // dout, q, k, v, out, lse, window, scale
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return result;
    auto cotangent = [](const at::Tensor& g) { return g.defined() ? OptTensor(inner_contiguous(g)) : std::nullopt; };
    const variable_list saved = ctx->get_saved_variables();  // dout, q, k, v, out, lse
    std::tie(result[1], result[2], result[3], result[0]) =
        bwd_bwd.call(cotangent(grads[0]), cotangent(grads[1]), cotangent(grads[2]), saved[1], saved[2], saved[3],
                     saved[4], saved[0], saved[5], ctx->saved_data["window"].toInt(),
                     ctx->saved_data["scale"].toDouble());
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> swa_fwd_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    int64_t window, double scale) {
  const variable_list out = SwaFwdFunction::apply(q, k, v, window, scale);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> swa_bwd_autograd(const at::Tensor& dout, const at::Tensor& q,
                                                                const at::Tensor& k, const at::Tensor& v,
                                                                const at::Tensor& out, const at::Tensor& lse,
                                                                int64_t window, double scale) {
  const variable_list grads = SwaBwdFunction::apply(dout, q, k, v, out, lse, window, scale);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace
}  // namespace ttt

// The schemas and the CPU implementations; libttt_kernels_cuda.so compiles this file again for the CUDA ones.
#if !defined(TTT_KERNELS_CUDA_GLUE_ONLY)
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

TORCH_LIBRARY_IMPL(ttt_kernels, Autograd, m) {
  m.impl("swa_fwd", &ttt::swa_fwd_autograd);
  m.impl("swa_bwd", &ttt::swa_bwd_autograd);
}
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("swa_fwd", &ttt::swa_fwd_cuda);
  m.impl("swa_bwd", &ttt::swa_bwd_cuda);
}
#endif
