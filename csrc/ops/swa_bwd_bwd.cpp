// torch glue of the double backward of sliding-window attention (math and params: include/ttt_kernels/swa_bwd_bwd.h):
//
//   swa_bwd_bwd(gdq?, gdk?, gdv?, q, k, v, out, dout, lse, window, scale) -> (grad_q, grad_k, grad_v, grad_dout)
// The cotangents of swa_bwd's (dq, dk, dv), each optional (None = zero), in; the derivatives of
// <gdq, dq> + <gdk, dk> + <gdv, dv> w.r.t. q, k, v (through out and lse too, which must be swa_fwd's outputs for
// q, k, v) and dout out. Shapes, dtypes and strides as swa_bwd's (csrc/ops/swa.cpp); outputs contiguous. The
// autograd formula of swa_bwd that calls it is in python/ttt_kernels/ops/swa_bwd_bwd.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "swa_glue.h"
#include "ttt_kernels/swa_bwd_bwd.h"

namespace ttt {
namespace {

using namespace swa_glue;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Cotangent = std::optional<at::Tensor>;

constexpr const char* kOp = "swa_bwd_bwd";

void check_cotangent(const char* name, const Cotangent& t, const at::Tensor& like, const at::Tensor& q) {
  if (!t.has_value()) return;
  check_like_q(kOp, name, *t, q);
  TORCH_CHECK(t->sizes() == like.sizes(), kOp, ": ", name, " must have shape ", like.sizes(), ", got ", t->sizes());
}

void check_bwd_bwd_inputs(const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv, const at::Tensor& q,
                             const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& dout,
                             const at::Tensor& lse, int64_t window, double scale) {
  check_bwd_inputs(kOp, dout, q, k, v, out, lse, window, scale);
  check_cotangent("gdq", gdq, q, q);
  check_cotangent("gdk", gdk, k, q);
  check_cotangent("gdv", gdv, k, q);
}

bool any_cotangent(const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv) {
  return gdq.has_value() || gdk.has_value() || gdv.has_value();
}

// (grad_q, grad_k, grad_v, grad_dout), contiguous in q's, k's, k's and q's shapes; zero-filled or uninitialized.
Grads new_grads(const at::Tensor& q, const at::Tensor& k, bool zeroed) {
  const auto like = [zeroed](const at::Tensor& t) {
    return zeroed ? at::zeros(t.sizes(), t.options()) : at::empty(t.sizes(), t.options());
  };
  return {like(q), like(k), like(k), like(q)};
}

// Everything but the workspaces: inputs, present cotangents (absent ones stay nullptr) and outputs.
void set_bwd_bwd_params(SwaBwdBwdParams& p, const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv,
                           const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                           const at::Tensor& dout, const at::Tensor& lse, int64_t window, double scale,
                           const Grads& grads) {
  set_params(p, q, k, v, out, lse, window, scale);
  set_rows(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, dout);
  if (gdq) set_rows(p.gdq, p.gdq_batch_stride, p.gdq_row_stride, p.gdq_head_stride, *gdq);
  if (gdk) set_rows(p.gdk, p.gdk_batch_stride, p.gdk_row_stride, p.gdk_head_stride, *gdk);
  if (gdv) set_rows(p.gdv, p.gdv_batch_stride, p.gdv_row_stride, p.gdv_head_stride, *gdv);
  const auto& [grad_q, grad_k, grad_v, grad_dout] = grads;
  set_rows(p.grad_q, p.gq_batch_stride, p.gq_row_stride, p.gq_head_stride, grad_q);
  set_rows(p.grad_k, p.gk_batch_stride, p.gk_row_stride, p.gk_head_stride, grad_k);
  set_rows(p.grad_v, p.gv_batch_stride, p.gv_row_stride, p.gv_head_stride, grad_v);
  set_rows(p.grad_dout, p.gdo_batch_stride, p.gdo_row_stride, p.gdo_head_stride, grad_dout);
}

// Allocates the outputs and the row statistics D, E, F (lse's shape and dtype), fills the params and runs
// launch(params, grads); the inputs are checked and in the layout the backend needs.
template <typename Launch>
Grads run_bwd_bwd(const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& dout,
                     const at::Tensor& lse, int64_t window, double scale, Launch&& launch) {
  Grads grads = new_grads(q, k, /*zeroed=*/false);
  SwaBwdBwdParams params;
  set_bwd_bwd_params(params, gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale, grads);
  const at::Tensor row_stats = at::empty({3, lse.size(0), lse.size(1), lse.size(2)}, lse.options());
  params.softmax_d = row_stats[0].data_ptr();
  params.row_e = row_stats[1].data_ptr();
  params.row_f = row_stats[2].data_ptr();
  const auto& [grad_q, grad_k, grad_v, grad_dout] = grads;
  const ops::SimBuffers buffers{{"gdq", gdq.value_or(at::Tensor())},
                                {"gdk", gdk.value_or(at::Tensor())},
                                {"gdv", gdv.value_or(at::Tensor())},
                                {"q", q},
                                {"k", k},
                                {"v", v},
                                {"out", out},
                                {"dout", dout},
                                {"lse", lse},
                                {"grad_q", grad_q},
                                {"grad_k", grad_k},
                                {"grad_v", grad_v},
                                {"grad_dout", grad_dout},
                                {"row_stats", row_stats}};
  launch(params);
  return grads;
}

#if defined(TTT_KERNELS_WITH_SIM) || defined(TTT_KERNELS_WITH_CUDA)
Cotangent aligned(const Cotangent& t) { return t ? Cotangent(with_aligned_rows(*t)) : std::nullopt; }

// The CUDA kernels (on a GPU, or simulated on CPU tensors): rows re-laid out to 16-byte alignment where needed.
template <typename Launch>
Grads bwd_bwd_device(const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv, const at::Tensor& q,
                        const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& dout,
                        const at::Tensor& lse, int64_t window, double scale, Launch&& launch) {
  check_bwd_bwd_inputs(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale);
  if (!any_cotangent(gdq, gdk, gdv)) return new_grads(q, k, /*zeroed=*/true);
  return run_bwd_bwd(aligned(gdq), aligned(gdk), aligned(gdv), with_aligned_rows(q), with_aligned_rows(k),
                        with_aligned_rows(v), with_aligned_rows(out), with_aligned_rows(dout), lse, window, scale,
                        std::forward<Launch>(launch));
}
#endif

Grads swa_bwd_bwd_cpu(const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv, const at::Tensor& q,
                      const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& dout,
                      const at::Tensor& lse, int64_t window, double scale) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) {
    return bwd_bwd_device(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale,
                             [](const SwaBwdBwdParams& params) { cuda_sim::swa_bwd_bwd(params, nullptr); });
  }
#endif
  check_bwd_bwd_inputs(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale);
  if (!any_cotangent(gdq, gdk, gdv)) return new_grads(q, k, /*zeroed=*/true);
  if (is_16bit(q)) {
    const auto widen = [](const at::Tensor& t) { return t.to(at::kFloat); };
    const auto widen_opt = [&](const Cotangent& t) { return t ? Cotangent(widen(*t)) : std::nullopt; };
    auto [grad_q, grad_k, grad_v, grad_dout] =
        swa_bwd_bwd_cpu(widen_opt(gdq), widen_opt(gdk), widen_opt(gdv), widen(q), widen(k), widen(v), widen(out),
                        widen(dout), lse, window, scale);
    const auto narrow = [&](const at::Tensor& t) { return t.to(q.scalar_type()); };
    return {narrow(grad_q), narrow(grad_k), narrow(grad_v), narrow(grad_dout)};
  }
  return run_bwd_bwd(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale,
                        [&](SwaBwdBwdParams& params) {
                          // The partial grad_q and grad_dout of later query tiles, lse's dtype.
                          const at::Tensor accum = ops::workspace(cpu::swa_bwd_bwd_workspace_bytes(params), lse);
                          params.dq_accum = accum.data_ptr();
                          cpu::swa_bwd_bwd(params);
                        });
}

#if defined(TTT_KERNELS_WITH_CUDA)
Grads swa_bwd_bwd_cuda(const Cotangent& gdq, const Cotangent& gdk, const Cotangent& gdv, const at::Tensor& q,
                       const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& dout,
                       const at::Tensor& lse, int64_t window, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const ops::NvtxRange range("swa_bwd_bwd", ' ', q.scalar_type(), " hd", q.size(3), " w", window);
  // The row statistics are freed on return while the kernels may still run: safe, the caching allocator reuses
  // them only for work queued later on this stream.
  return bwd_bwd_device(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale,
                           [](const SwaBwdBwdParams& params) {
                             cuda::swa_bwd_bwd(params, c10::cuda::getCurrentCUDAStream().stream());
                           });
}
#endif

}  // namespace
}  // namespace ttt

// The schemas and the CPU implementations; libttt_kernels_cuda.so compiles this file again for the CUDA ones.
#if !defined(TTT_KERNELS_CUDA_GLUE_ONLY)
TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def(
      "swa_bwd_bwd(Tensor? gdq, Tensor? gdk, Tensor? gdv, Tensor q, Tensor k, Tensor v, Tensor out, Tensor dout, "
      "Tensor lse, int window, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_dout)");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) { m.impl("swa_bwd_bwd", &ttt::swa_bwd_bwd_cpu); }
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) { m.impl("swa_bwd_bwd", &ttt::swa_bwd_bwd_cuda); }
#endif
