// torch glue for the fused RMSNorm kernels: schemas, argument checks, and the CPU / simulator / CUDA dispatch.
//
//   rms_norm_fwd(x [..., d], weight [d], eps, residual? [..., d], rope? [n, d / 2, 2]) -> (out [..., d], rstd [rows])
//     out = [residual +] weight * x * rstd: the residual fuses a post-norm residual connection; with rope (x
//     [..., n, heads, d]), out = RoPE(weight * x * rstd): QK-norm and rotary embeddings in one op
//   rms_norm_bwd(grad_out [..., d], x [..., d], weight [d], rstd [rows], rope?) -> (grad_x [..., d], grad_weight [d])
//   rms_norm_bwd_bwd(grad_out, x, weight, rstd, grad_grad_x? [..., d], grad_grad_weight? [d], rope?)
//     -> (grad_grad_out [..., d], grad_x [..., d], grad_weight [d])      the backward's vector-Jacobian product
// rows = x.numel() / d; rstd is float32 (float64 for float64 x), and so is rope: (cos, sin) of each position's angle
// per pair (2i, 2i + 1) of the last dimension (include/ttt_kernels/rms_norm.h). The autograd formulas of rms_norm_fwd
// and rms_norm_bwd are at the end of this file; rms_norm_bwd_bwd's (third order), the fake tensors and the Python API
// are in python/ttt_kernels/ops/rms_norm.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include "autograd.h"
#include "common.h"
#include "ttt_kernels/rms_norm.h"

namespace ttt {
namespace {

using ops::to_dtype;

at::ScalarType rstd_dtype(const at::Tensor& x) { return ops::stats_dtype(x.scalar_type()); }

// The checks of x and weight shared by both ops; `op` names the op in the messages.
void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK(x.size(-1) > 0, op, ": x must have a non-empty last dimension, got shape ", x.sizes());
  to_dtype(op, "x", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous, got strides ", x.strides(), " for shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight must have shape [", x.size(-1),
              "] (the last dimension of x), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
              ", got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight must be on x's device ", x.device(), ", got ",
              weight.device());
  TORCH_CHECK(weight.is_contiguous(), op, ": weight must be contiguous, got stride ", weight.strides());
}

// t has ref's shape, x's dtype and device, and is contiguous.
void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref,
                const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have ", ref_name, "'s shape ", ref.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

void check_bwd_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& rstd) {
  check_inputs(op, x, weight);
  check_like(op, "grad_out", grad_out, "x", x, x);
  const int64_t rows = x.numel() / x.size(-1);
  TORCH_CHECK(rstd.dim() == 1 && rstd.size(0) == rows, op, ": rstd must have shape [", rows,
              "] (x.numel() / x.size(-1)), got ", rstd.sizes());
  TORCH_CHECK(rstd.scalar_type() == rstd_dtype(x), op, ": rstd must be ", rstd_dtype(x), " for ", x.scalar_type(),
              " x, got ", rstd.scalar_type());
  TORCH_CHECK(rstd.device() == x.device(), op, ": rstd must be on x's device ", x.device(), ", got ",
              rstd.device());
  TORCH_CHECK(rstd.is_contiguous(), op, ": rstd must be contiguous");
}

using OptTensor = std::optional<at::Tensor>;

// The rotary table of x [..., n, heads, d]: [n, d / 2, 2], rstd's dtype, x's device, contiguous.
void check_rope(const char* op, const OptTensor& rope, const at::Tensor& x) {
  if (!rope) return;
  TORCH_CHECK(x.dim() >= 3, op, ": with rope, x must be [..., positions, heads, dim], got shape ", x.sizes());
  TORCH_CHECK(x.size(-1) % 2 == 0, op, ": with rope, x's last dimension must be even (pairs), got ", x.size(-1));
  TORCH_CHECK(rope->dim() == 3 && rope->size(0) == x.size(-3) && rope->size(1) == x.size(-1) / 2 &&
                  rope->size(2) == 2,
              op, ": rope must have shape [", x.size(-3), ", ", x.size(-1) / 2,
              ", 2] (x's positions, half its last dimension, (cos, sin)), got ", rope->sizes());
  TORCH_CHECK(rope->scalar_type() == rstd_dtype(x), op, ": rope must be ", rstd_dtype(x), " for ", x.scalar_type(),
              " x, got ", rope->scalar_type());
  TORCH_CHECK(rope->device() == x.device(), op, ": rope must be on x's device ", x.device(), ", got ",
              rope->device());
  TORCH_CHECK(rope->is_contiguous(), op, ": rope must be contiguous, got strides ", rope->strides());
}

// t itself, or with RoPE and a start at an odd element a copy (after the argument checks, which see the caller's
// tensors): the CUDA kernels rotate pairs of elements in one thread, so every row tensor they read starts at an even
// element (their launchers refuse others).
at::Tensor pairs_aligned(const at::Tensor& t, const OptTensor& rope) {
  const bool odd = rope && t.defined() && reinterpret_cast<uintptr_t>(t.data_ptr()) % (2 * t.element_size()) != 0;
  return odd ? t.clone() : t;
}

// The fields both directions share; each op then sets its own outputs (and eps / grad_out).
void set_params(RmsNormParams& params, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& rstd,
                const OptTensor& rope) {
  params.x = x.data_ptr();
  params.weight = weight.data_ptr();
  params.rstd = rstd.data_ptr();
  params.dim = x.size(-1);
  params.rows = x.numel() / params.dim;
  params.dtype = to_dtype("rms_norm", "x", x.scalar_type());
  if (rope) {
    params.rope = rope->data_ptr();
    params.rope_heads = x.size(-2);
    params.rope_positions = x.size(-3);
  }
}

// Checks the arguments, allocates out and rstd, fills the params and runs launch(params) (a backend's kernel).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x_in, const at::Tensor& weight_in, double eps,
                                           const OptTensor& residual, const OptTensor& rope, Launch&& launch) {
  check_inputs("rms_norm_fwd", x_in, weight_in);
  TORCH_CHECK(eps > 0.0 && std::isfinite(eps), "rms_norm_fwd: eps must be a finite number > 0, got ", eps);
  if (residual) check_like("rms_norm_fwd", "residual", *residual, "x", x_in, x_in);
  TORCH_CHECK(!(residual && rope), "rms_norm_fwd: residual and rope cannot be combined (a residual is added after ",
              "a post-norm, RoPE follows a QK-norm)");
  check_rope("rms_norm_fwd", rope, x_in);
  const at::Tensor x = pairs_aligned(x_in, rope);
  const at::Tensor weight = pairs_aligned(weight_in, rope);
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor rstd = at::empty({x.numel() / x.size(-1)}, x.options().dtype(rstd_dtype(x)));
  RmsNormParams params;
  set_params(params, x, weight, rstd, rope);
  params.out = out.data_ptr();
  params.residual = residual ? residual->data_ptr() : nullptr;
  params.eps = eps;
  const ops::SimBuffers buffers{{"x", x},     {"weight", weight}, {"residual", residual.value_or(at::Tensor())},
                                {"out", out}, {"rstd", rstd},     {"rope", rope.value_or(at::Tensor())}};
  launch(params);
  return {out, rstd};
}

// Checks the arguments, allocates grad_x and grad_weight, fills the params and runs launch(params).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                            const at::Tensor& weight_in, const at::Tensor& rstd,
                                            const OptTensor& rope, Launch&& launch) {
  check_bwd_inputs("rms_norm_bwd", grad_out_in, x_in, weight_in, rstd);
  check_rope("rms_norm_bwd", rope, x_in);
  const at::Tensor grad_out = pairs_aligned(grad_out_in, rope);
  const at::Tensor x = pairs_aligned(x_in, rope);
  const at::Tensor weight = pairs_aligned(weight_in, rope);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  RmsNormParams params;
  set_params(params, x, weight, rstd, rope);
  params.grad_out = grad_out.data_ptr();
  params.grad_x = grad_x.data_ptr();
  params.grad_weight = grad_weight.data_ptr();
  const ops::SimBuffers buffers{{"grad_out", grad_out}, {"x", x},
                                {"weight", weight},     {"rstd", rstd},
                                {"grad_x", grad_x},     {"grad_weight", grad_weight},
                                {"rope", rope.value_or(at::Tensor())}};
  launch(params);
  return {grad_x, grad_weight};
}

using BwdBwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Checks the arguments, allocates grad_grad_out, grad_x and grad_weight, fills the params and runs launch(params).
template <typename Launch>
BwdBwdResult double_backward(const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
                             const at::Tensor& rstd, const OptTensor& grad_grad_x_in,
                             const OptTensor& grad_grad_weight_in, const OptTensor& rope, Launch&& launch) {
  const char* op = "rms_norm_bwd_bwd";
  check_bwd_inputs(op, grad_out_in, x_in, weight_in, rstd);
  check_rope(op, rope, x_in);
  if (grad_grad_x_in) check_like(op, "grad_grad_x", *grad_grad_x_in, "x", x_in, x_in);
  if (grad_grad_weight_in) check_like(op, "grad_grad_weight", *grad_grad_weight_in, "weight", weight_in, x_in);
  const at::Tensor grad_out = pairs_aligned(grad_out_in, rope);
  const at::Tensor x = pairs_aligned(x_in, rope);
  const at::Tensor weight = pairs_aligned(weight_in, rope);
  const at::Tensor grad_grad_x = pairs_aligned(grad_grad_x_in.value_or(at::Tensor()), rope);
  const at::Tensor grad_grad_weight = pairs_aligned(grad_grad_weight_in.value_or(at::Tensor()), rope);
  at::Tensor grad_grad_out = at::empty(x.sizes(), x.options());
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  RmsNormParams params;
  set_params(params, x, weight, rstd, rope);
  params.grad_out = grad_out.data_ptr();
  params.grad_grad_x = grad_grad_x.defined() ? grad_grad_x.data_ptr() : nullptr;
  params.grad_grad_weight = grad_grad_weight.defined() ? grad_grad_weight.data_ptr() : nullptr;
  params.grad_grad_out = grad_grad_out.data_ptr();
  params.grad_x = grad_x.data_ptr();
  params.grad_weight = grad_weight.data_ptr();
  const ops::SimBuffers buffers{{"grad_out", grad_out},
                                {"x", x},
                                {"weight", weight},
                                {"rstd", rstd},
                                {"grad_grad_x", grad_grad_x},
                                {"grad_grad_weight", grad_grad_weight},
                                {"grad_grad_out", grad_grad_out},
                                {"grad_x", grad_x},
                                {"grad_weight", grad_weight},
                                {"rope", rope.value_or(at::Tensor())}};
  launch(params);
  return {grad_grad_out, grad_x, grad_weight};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                    const OptTensor& residual, const OptTensor& rope) {
  return forward(x, weight, eps, residual, rope, [](const RmsNormParams& params) {
#if defined(TTT_KERNELS_WITH_SIM)
    if (sim::config().enabled) {
      cuda_sim::rms_norm_fwd(params, /*stream=*/nullptr);
      return;
    }
#endif
    cpu::rms_norm_fwd(params);
  });
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& rstd,
                                                    const OptTensor& rope) {
  return backward(grad_out, x, weight, rstd, rope, [&rstd](RmsNormParams& params) {
#if defined(TTT_KERNELS_WITH_SIM)
    if (sim::config().enabled) {
      // The CUDA kernels reduce grad_weight through per-block partial sums.
      const at::Tensor workspace = ops::workspace(cuda_sim::rms_norm_bwd_workspace_bytes(params), rstd);
      params.workspace = workspace.data_ptr();
      const ops::SimBuffers scratch{{"workspace", workspace}};
      cuda_sim::rms_norm_bwd(params, /*stream=*/nullptr);
      return;
    }
#endif
    cpu::rms_norm_bwd(params);
  });
}

BwdBwdResult rms_norm_bwd_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& rstd, const OptTensor& grad_grad_x,
                                  const OptTensor& grad_grad_weight, const OptTensor& rope) {
  return double_backward(grad_out, x, weight, rstd, grad_grad_x, grad_grad_weight, rope,
                         [&rstd](RmsNormParams& params) {
#if defined(TTT_KERNELS_WITH_SIM)
    if (sim::config().enabled) {
      const at::Tensor workspace = ops::workspace(cuda_sim::rms_norm_bwd_workspace_bytes(params), rstd);
      params.workspace = workspace.data_ptr();
      const ops::SimBuffers scratch{{"workspace", workspace}};
      cuda_sim::rms_norm_bwd_bwd(params, /*stream=*/nullptr);
      return;
    }
#endif
    cpu::rms_norm_bwd_bwd(params);
  });
}

#if defined(TTT_KERNELS_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                     const OptTensor& residual, const OptTensor& rope) {
  const c10::cuda::CUDAGuard guard(x.device());
  const ops::NvtxRange range("rms_norm_fwd", ' ', x.scalar_type(), " d", x.size(-1), residual ? " residual" : "",
                             rope ? " rope" : "");
  return forward(x, weight, eps, residual, rope, [](const RmsNormParams& params) {
    cuda::rms_norm_fwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                     const at::Tensor& weight, const at::Tensor& rstd,
                                                     const OptTensor& rope) {
  const c10::cuda::CUDAGuard guard(x.device());
  const ops::NvtxRange range("rms_norm_bwd", ' ', x.scalar_type(), " d", x.size(-1), rope ? " rope" : "");
  return backward(grad_out, x, weight, rstd, rope, [&rstd](RmsNormParams& params) {
    // Per-block partial sums of grad_weight. Freed on return while the kernels may still run: safe, the caching
    // allocator reuses it only for work queued later on this stream.
    const at::Tensor workspace = ops::workspace(cuda::rms_norm_bwd_workspace_bytes(params), rstd);
    params.workspace = workspace.data_ptr();
    cuda::rms_norm_bwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}

BwdBwdResult rms_norm_bwd_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& rstd, const OptTensor& grad_grad_x,
                                   const OptTensor& grad_grad_weight, const OptTensor& rope) {
  const c10::cuda::CUDAGuard guard(x.device());
  const ops::NvtxRange range("rms_norm_bwd_bwd", ' ', x.scalar_type(), " d", x.size(-1), rope ? " rope" : "");
  return double_backward(grad_out, x, weight, rstd, grad_grad_x, grad_grad_weight, rope,
                         [&rstd](RmsNormParams& params) {
    const at::Tensor workspace = ops::workspace(cuda::rms_norm_bwd_workspace_bytes(params), rstd);
    params.workspace = workspace.data_ptr();
    cuda::rms_norm_bwd_bwd(params, c10::cuda::getCurrentCUDAStream().stream());
  });
}
#endif

// ---- autograd ------------------------------------------------------------------------------------------------------
// rms_norm_fwd's backward is rms_norm_bwd, and rms_norm_bwd's is rms_norm_bwd_bwd (whose own backward, third order, is
// Python: python/ttt_kernels/ops/rms_norm.py). csrc/ops/autograd.h says why these are C++.
using ops::AutogradContext;
using ops::variable_list;

using BwdSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const OptTensor&);

// rms_norm_fwd(x, weight, eps, residual?, rope?) -> (out, rstd): grad_x and grad_weight from rms_norm_bwd,
// grad_residual = grad_out; rstd is not differentiable and rope (a constant table) gets no gradient.
struct RmsNormFwdFunction : torch::autograd::Function<RmsNormFwdFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps,
                               const OptTensor& residual, const OptTensor& rope) {
    static const auto op = ops::op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, double, const OptTensor&, const OptTensor&)>("ttt_kernels::rms_norm_fwd");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, rstd] = op.call(x, weight, eps, residual, rope);
    ctx->save_for_backward({x, weight, rstd, rope.value_or(at::Tensor())});
    ctx->saved_data["residual"] = residual.has_value();
    ctx->mark_non_differentiable({rstd});
    ctx->set_materialize_grads(false);
    return {out, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = ops::op_handle<BwdSignature>("ttt_kernels::rms_norm_bwd");
    variable_list result(5);  // x, weight, eps, residual, rope
    const at::Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return result;
    const variable_list saved = ctx->get_saved_variables();  // x, weight, rstd, rope
    std::tie(result[0], result[1]) =
        bwd.call(grad_out.contiguous(), saved[0], saved[1], saved[2], ops::optional_of(saved[3]));
    if (ctx->saved_data["residual"].toBool()) result[3] = grad_out;
    return result;
  }
};

// rms_norm_bwd(grad_out, x, weight, rstd, rope?) -> (grad_x, grad_weight): the vector-Jacobian product is the fused
// rms_norm_bwd_bwd. rstd gets no gradient: its dependence on x is part of rms_norm_bwd_bwd's grad_x.
struct RmsNormBwdFunction : torch::autograd::Function<RmsNormBwdFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& rstd, const OptTensor& rope) {
    static const auto op = ops::op_handle<BwdSignature>("ttt_kernels::rms_norm_bwd");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_x, grad_weight] = op.call(grad_out, x, weight, rstd, rope);
    ctx->save_for_backward({grad_out, x, weight, rstd, rope.value_or(at::Tensor())});
    ctx->set_materialize_grads(false);
    return {grad_x, grad_weight};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd_bwd =
        ops::op_handle<BwdBwdResult(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const OptTensor&, const OptTensor&, const OptTensor&)>(
            "ttt_kernels::rms_norm_bwd_bwd");
    variable_list result(5);  // grad_out, x, weight, rstd, rope
    if (!grads[0].defined() && !grads[1].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();  // grad_out, x, weight, rstd, rope
    std::tie(result[0], result[1], result[2]) =
        bwd_bwd.call(saved[0], saved[1], saved[2], saved[3], ops::contiguous_cotangent(grads[0]),
                     ops::contiguous_cotangent(grads[1]), ops::optional_of(saved[4]));
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_autograd(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                         const OptTensor& residual, const OptTensor& rope) {
  const variable_list out = RmsNormFwdFunction::apply(x, weight, eps, residual, rope);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_autograd(const at::Tensor& grad_out, const at::Tensor& x,
                                                         const at::Tensor& weight, const at::Tensor& rstd,
                                                         const OptTensor& rope) {
  const variable_list out = RmsNormBwdFunction::apply(grad_out, x, weight, rstd, rope);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace ttt

// The schemas and the CPU implementations; libttt_kernels_cuda.so compiles this file again for the CUDA ones.
#if !defined(TTT_KERNELS_CUDA_GLUE_ONLY)
TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def(
      "rms_norm_fwd(Tensor x, Tensor weight, float eps, Tensor? residual=None, Tensor? rope=None) -> (Tensor out, "
      "Tensor rstd)");
  m.def(
      "rms_norm_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor rstd, Tensor? rope=None) -> (Tensor grad_x, "
      "Tensor grad_weight)");
  m.def(
      "rms_norm_bwd_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor rstd, Tensor? grad_grad_x, "
      "Tensor? grad_grad_weight, Tensor? rope=None) -> (Tensor grad_grad_out, Tensor grad_x, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) {
  m.impl("rms_norm_fwd", &ttt::rms_norm_fwd_cpu);
  m.impl("rms_norm_bwd", &ttt::rms_norm_bwd_cpu);
  m.impl("rms_norm_bwd_bwd", &ttt::rms_norm_bwd_bwd_cpu);
}

TORCH_LIBRARY_IMPL(ttt_kernels, Autograd, m) {
  m.impl("rms_norm_fwd", &ttt::rms_norm_fwd_autograd);
  m.impl("rms_norm_bwd", &ttt::rms_norm_bwd_autograd);
}
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("rms_norm_fwd", &ttt::rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &ttt::rms_norm_bwd_cuda);
  m.impl("rms_norm_bwd_bwd", &ttt::rms_norm_bwd_bwd_cuda);
}
#endif
