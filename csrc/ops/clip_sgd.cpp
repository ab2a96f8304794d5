// torch glue of the clipped SGD step of the fast weights: schemas, argument checks, CPU / simulator / CUDA dispatch
// (math and params: include/ttt_kernels/clip_sgd.h, docs/mlp.md).
//
//   clip_sgd_update(weights[], grads[], lr, max_norm, batched) -> (new_weights[], norm)
//   clip_sgd_update_(weights[] (in place), grads[], lr, max_norm, batched) -> norm
//     batched: every tensor is [B, ...]; sequence b is clipped by the norm of its own slices (norm [B])
//
// Weights and grads are float32 or float64. CPU: the kernel of csrc/cpu/clip_sgd.cpp. CUDA (and the simulator, on
// CPU tensors inside ttt_kernels.sim.enabled()): the kernels of csrc/cuda/clip_sgd.cu, with a device workspace.
// clip_sgd_update's autograd formula is at the end of this file; the fake tensors and the Python API are in
// python/ttt_kernels/ops/clip_sgd.py.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "autograd.h"
#include "common.h"
#include "ttt_kernels/clip_sgd.h"

namespace ttt {
namespace {

// The CUDA kernels run on a backend: the GPU (ttt::cuda) or the simulator (ttt::cuda_sim, CPU tensors).
#if defined(TTT_KERNELS_WITH_SIM)
struct SimBackend {
  static int64_t clip_workspace(const ClipSgdParams& p) { return cuda_sim::clip_sgd_workspace_bytes(p); }
  static void clip_sgd_update(const ClipSgdParams& p) { cuda_sim::clip_sgd_update(p, /*stream=*/nullptr); }
};
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
struct CudaBackend {
  static int64_t clip_workspace(const ClipSgdParams& p) { return cuda::clip_sgd_workspace_bytes(p); }
  static void clip_sgd_update(const ClipSgdParams& p) {
    cuda::clip_sgd_update(p, c10::cuda::getCurrentCUDAStream().stream());
  }
};
#endif

// The sequences of a (batched) clip: the common leading dimension of all weights, 1 when not batched.
int64_t clip_batch(const char* op, at::TensorList weights, bool batched) {
  if (!batched) return 1;
  TORCH_CHECK(!weights.empty(), op, ": batched needs at least one weight (the batch size is their leading dimension)");
  TORCH_CHECK(weights[0].dim() >= 1 && weights[0].size(0) >= 1, op,
              ": batched weights must have a leading batch dimension >= 1, got weights[0] of shape ",
              weights[0].sizes());
  const int64_t batch = weights[0].size(0);
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK(weights[i].dim() >= 1 && weights[i].size(0) == batch, op, ": batched weights must share the leading ",
                "dimension of weights[0] (", batch, "), got weights[", i, "] of shape ", weights[i].sizes());
  }
  return batch;
}

// Checks the lists (same length, pairwise same shape, one float32 / float64 dtype, one device, contiguous) and
// max_norm / lr; returns the (weight, grad, out) table with outs[i] as the destination of weights[i].
std::vector<ClipTensor> clip_table(const char* op, at::TensorList weights, at::TensorList grads,
                                   const std::vector<at::Tensor>& outs, double lr, double max_norm) {
  TORCH_CHECK(weights.size() == grads.size(), op, ": weights and grads must have the same length, got ",
              weights.size(), " and ", grads.size());
  TORCH_CHECK(std::isfinite(lr), op, ": lr must be finite, got ", lr);
  TORCH_CHECK(max_norm > 0.0 && !std::isnan(max_norm), op, ": max_norm must be > 0 (inf: no clipping), got ",
              max_norm);
  std::vector<ClipTensor> table(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& ref = weights[0];
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, op, ": weights[", i,
                "] must be float32 or float64, got ", w.scalar_type());
    TORCH_CHECK(w.scalar_type() == ref.scalar_type() && g.scalar_type() == ref.scalar_type(), op, ": weights[", i,
                "] and grads[", i, "] must have the dtype of weights[0] (", ref.scalar_type(), "), got ",
                w.scalar_type(), " and ", g.scalar_type());
    TORCH_CHECK(g.sizes() == w.sizes(), op, ": grads[", i, "] must have the shape of weights[", i, "] ", w.sizes(),
                ", got ", g.sizes());
    TORCH_CHECK(w.device() == ref.device() && g.device() == ref.device(), op, ": weights[", i, "] and grads[", i,
                "] must be on the device of weights[0] (", ref.device(), ")");
    TORCH_CHECK(w.is_contiguous() && g.is_contiguous(), op, ": weights[", i, "] and grads[", i,
                "] must be contiguous");
    table[i] = {w.data_ptr(), g.data_ptr(), outs[i].data_ptr(), w.numel()};
  }
  return table;
}

// Runs the update from weights into outs; returns the norm (0-d, the weights' dtype; [B] when batched).
template <typename Kernel>
at::Tensor clip_sgd(const char* op, at::TensorList weights, at::TensorList grads, const std::vector<at::Tensor>& outs,
                    double lr, double max_norm, bool batched, Kernel&& kernel) {
  const std::vector<ClipTensor> table = clip_table(op, weights, grads, outs, lr, max_norm);
  const int64_t batch = clip_batch(op, weights, batched);
  const at::TensorOptions opts =
      weights.empty() ? at::TensorOptions().dtype(at::kFloat) : weights[0].options();
  at::Tensor norm = batched ? at::empty({batch}, opts) : at::empty({}, opts);
  ClipSgdParams p;
  p.tensors = table.data();
  p.count = static_cast<int64_t>(table.size());
  p.batch = batch;
  p.dtype = ops::to_dtype(op, "weights", opts.dtype().toScalarType());
  p.lr = lr;
  p.max_norm = max_norm;
  p.norm = norm.data_ptr();
  kernel(p, opts);
  return norm;
}

template <typename Backend>
void clip_on_device(ClipSgdParams& p, const at::TensorOptions& opts) {
  const at::Tensor workspace = at::empty({Backend::clip_workspace(p)}, opts.dtype(at::kByte));
  p.workspace = workspace.data_ptr();
  ops::SimBuffers buffers{{"workspace", workspace}};
  const std::size_t element = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  buffers.add("norm", p.norm, static_cast<std::size_t>(p.batch) * element);
  buffers.add("the tensor table", p.tensors, static_cast<std::size_t>(p.count) * sizeof(ClipTensor));
  for (int64_t i = 0; i < p.count; ++i) {
    const ClipTensor& t = p.tensors[i];
    const auto bytes = static_cast<std::size_t>(t.numel) * element;
    buffers.add("weights[" + std::to_string(i) + "]", t.weight, bytes);
    buffers.add("grads[" + std::to_string(i) + "]", t.grad, bytes);
    buffers.add("outs[" + std::to_string(i) + "]", t.out, bytes);
  }
  Backend::clip_sgd_update(p);
}

void clip_on_cpu(ClipSgdParams& p, const at::TensorOptions& opts) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) return clip_on_device<SimBackend>(p, opts);
#endif
  (void)opts;
  cpu::clip_sgd_update(p);
}

template <typename Run>
std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_out_of_place(at::TensorList weights, at::TensorList grads,
                                                                      double lr, double max_norm, bool batched,
                                                                      Run&& run) {
  std::vector<at::Tensor> outs;
  outs.reserve(weights.size());
  for (const at::Tensor& w : weights) outs.push_back(at::empty_like(w, at::MemoryFormat::Contiguous));
  at::Tensor norm = clip_sgd("clip_sgd_update", weights, grads, outs, lr, max_norm, batched, run);
  return {outs, norm};
}

template <typename Run>
at::Tensor clip_sgd_in_place(at::TensorList weights, at::TensorList grads, double lr, double max_norm, bool batched,
                             Run&& run) {
  const std::vector<at::Tensor> outs(weights.begin(), weights.end());
  return clip_sgd("clip_sgd_update_", weights, grads, outs, lr, max_norm, batched, run);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_update_cpu(at::TensorList weights, at::TensorList grads,
                                                                    double lr, double max_norm, bool batched) {
  return clip_sgd_out_of_place(weights, grads, lr, max_norm, batched, clip_on_cpu);
}

at::Tensor clip_sgd_update_inplace_cpu(at::TensorList weights, at::TensorList grads, double lr, double max_norm,
                                       bool batched) {
  return clip_sgd_in_place(weights, grads, lr, max_norm, batched, clip_on_cpu);
}

// ---- CUDA -----------------------------------------------------------------------------------------------------------

#if defined(TTT_KERNELS_WITH_CUDA)
void clip_on_cuda(ClipSgdParams& p, const at::TensorOptions& opts) { clip_on_device<CudaBackend>(p, opts); }

std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_update_cuda(at::TensorList weights, at::TensorList grads,
                                                                     double lr, double max_norm, bool batched) {
  const c10::cuda::OptionalCUDAGuard guard(weights.empty() ? std::nullopt : std::optional(weights[0].device()));
  const ops::NvtxRange range("clip_sgd_update", " tensors", weights.size(), batched ? " batched" : "");
  return clip_sgd_out_of_place(weights, grads, lr, max_norm, batched, clip_on_cuda);
}

at::Tensor clip_sgd_update_inplace_cuda(at::TensorList weights, at::TensorList grads, double lr, double max_norm,
                                        bool batched) {
  const c10::cuda::OptionalCUDAGuard guard(weights.empty() ? std::nullopt : std::optional(weights[0].device()));
  const ops::NvtxRange range("clip_sgd_update", " tensors", weights.size(), batched ? " batched" : "");
  return clip_sgd_in_place(weights, grads, lr, max_norm, batched, clip_on_cuda);
}
#endif

// ---- autograd ------------------------------------------------------------------------------------------------------
// (csrc/ops/autograd.h says why this is C++.)

// clip_sgd_update: new_w = w - lr s g with s = 1 if n < c else c / n, n = sqrt(sum over all grads of g^2),
// c = max_norm:
//     dL/dw = U,   dL/dg = -lr s (U - k g),   k = <U, g> / n^2 when clipped, else 0
// (ds/dg = -(s / n^2) g when clipped). Written with differentiable ATen ops, with the branch taken as in the forward
// and n^2 recomputed from the grads, so that it differentiates again (in g and U). Denominators are replaced by 1 on
// the unclipped branch (a value of the branch not taken: zero gradients yield no NaN, not even in the second
// derivative, and a huge max_norm such as 1e20 no float32 overflow). Batched, all of this holds per sequence: n, s
// and k are [B], summed over each tensor's other dimensions.
struct ClipSgdUpdateFunction : torch::autograd::Function<ClipSgdUpdateFunction> {
  static ops::variable_list forward(ops::AutogradContext* ctx, at::TensorList weights, at::TensorList grads, double lr,
                                    double max_norm, bool batched) {
    static const auto op = ops::op_handle<std::tuple<std::vector<at::Tensor>, at::Tensor>(
        at::TensorList, at::TensorList, double, double, bool)>("ttt_kernels::clip_sgd_update");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [new_weights, norm] = op.call(weights, grads, lr, max_norm, batched);
    ops::variable_list saved{norm};
    saved.insert(saved.end(), grads.begin(), grads.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["lr"] = lr;
    ctx->saved_data["max_norm"] = max_norm;
    ctx->saved_data["batched"] = batched;
    ctx->mark_non_differentiable({norm});
    ctx->set_materialize_grads(false);  // the norm's cotangent (and unused weights') stay undefined: no zero tensors
    new_weights.push_back(norm);
    return new_weights;
  }

  // The sum of each sequence's elements of t: [B] when batched, 0-d otherwise.
  static at::Tensor per_sequence_sum(const at::Tensor& t, bool batched) {
    return batched ? t.flatten(1).sum(1) : t.sum();
  }

  // A per-sequence factor v ([B] when batched, 0-d otherwise) broadcastable to g.
  static at::Tensor per_element(const at::Tensor& v, const at::Tensor& g, bool batched) {
    if (!batched) return v;
    std::vector<int64_t> shape(g.dim(), 1);
    shape[0] = -1;
    return v.view(shape);
  }

  // The backward when nothing records it (no create_graph, the usual outer backward of a meta step): n from the
  // forward's norm instead of the grads' squares, and dL/dg = -lr s (U - k g) in two passes per tensor with one new
  // tensor: four passes and two new tensors per tensor, where the differentiable form below takes seven and five.
  // result holds the weights' gradients U; saved is (norm, grads).
  static ops::variable_list backward_without_graph(ops::variable_list& result, const ops::variable_list& saved,
                                                   const at::Tensor& clipped, double lr, double c, bool batched) {
    const at::Tensor& norm = saved[0];
    const std::size_t count = saved.size() - 1;
    at::Tensor dot;
    for (std::size_t i = 0; i < count; ++i) {
      // (Not bmm of [B, 1, N] x [B, N, 1]: MKL takes 40x longer for B > 1.)
      const at::Tensor ug = per_sequence_sum(result[i] * saved[1 + i], batched);
      dot = i == 0 ? ug : dot + ug;
    }
    const at::Tensor denom = at::where(clipped, norm, at::ones_like(norm));
    const at::Tensor step = at::where(clipped, c / denom, at::ones_like(norm)) * -lr;  // -lr s
    const at::Tensor minus_k = at::where(clipped, -dot / (denom * denom), at::zeros_like(norm));
    for (std::size_t i = 0; i < count; ++i) {
      const at::Tensor& g = saved[1 + i];
      result[count + i] =
          at::addcmul(result[i], g, per_element(minus_k, g, batched)).mul_(per_element(step, g, batched));
    }
    return result;
  }

  // grad_outputs: one per new weight, then the norm's; the result: the weights' gradients, the grads', and none for
  // lr, max_norm and batched.
  static ops::variable_list backward(ops::AutogradContext* ctx, ops::variable_list grad_outputs) {
    const ops::variable_list saved = ctx->get_saved_variables();  // norm, grads
    const at::Tensor& norm = saved[0];
    const std::size_t count = saved.size() - 1;
    const double lr = ctx->saved_data["lr"].toDouble(), c = ctx->saved_data["max_norm"].toDouble();
    const bool batched = ctx->saved_data["batched"].toBool();
    ops::variable_list result(2 * count + 3);
    for (std::size_t i = 0; i < count; ++i) {
      result[i] = grad_outputs[i].defined() ? grad_outputs[i] : at::zeros_like(saved[1 + i]);
    }
    if (std::isinf(c)) {
      for (std::size_t i = 0; i < count; ++i) result[count + i] = result[i] * -lr;
      return result;
    }
    const at::Tensor clipped = norm.lt(c).logical_not();  // NaN norms take the clipped branch, as in the forward
    if (!at::GradMode::is_enabled()) return backward_without_graph(result, saved, clipped, lr, c, batched);
    at::Tensor n2, dot;
    for (std::size_t i = 0; i < count; ++i) {
      const at::Tensor& g = saved[1 + i];
      const at::Tensor g2 = per_sequence_sum(g * g, batched), ug = per_sequence_sum(result[i] * g, batched);
      n2 = i == 0 ? g2 : n2 + g2;
      dot = i == 0 ? ug : dot + ug;
    }
    const at::Tensor denom = at::where(clipped, n2, at::ones_like(n2));
    const at::Tensor scale = at::where(clipped, denom.rsqrt() * c, at::ones_like(denom));
    const at::Tensor k = at::where(clipped, dot / denom, at::zeros_like(denom));
    for (std::size_t i = 0; i < count; ++i) {
      const at::Tensor& g = saved[1 + i];
      result[count + i] = per_element(scale, g, batched) * -lr * (result[i] - per_element(k, g, batched) * g);
    }
    return result;
  }
};

std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_update_autograd(at::TensorList weights, at::TensorList grads,
                                                                         double lr, double max_norm, bool batched) {
  ops::variable_list outputs = ClipSgdUpdateFunction::apply(weights, grads, lr, max_norm, batched);
  at::Tensor norm = outputs.back();
  outputs.pop_back();
  return {outputs, norm};
}

}  // namespace
}  // namespace ttt

// The schemas and the CPU implementations; libttt_kernels_cuda.so compiles this file again for the CUDA ones.
#if !defined(TTT_KERNELS_CUDA_GLUE_ONLY)
TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def(
      "clip_sgd_update(Tensor[] weights, Tensor[] grads, float lr, float max_norm, bool batched=False) -> "
      "(Tensor[] new_weights, Tensor norm)");
  m.def(
      "clip_sgd_update_(Tensor(a!)[] weights, Tensor[] grads, float lr, float max_norm, bool batched=False) -> "
      "Tensor norm");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) {
  m.impl("clip_sgd_update", &ttt::clip_sgd_update_cpu);
  m.impl("clip_sgd_update_", &ttt::clip_sgd_update_inplace_cpu);
}

TORCH_LIBRARY_IMPL(ttt_kernels, Autograd, m) { m.impl("clip_sgd_update", &ttt::clip_sgd_update_autograd); }
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("clip_sgd_update", &ttt::clip_sgd_update_cuda);
  m.impl("clip_sgd_update_", &ttt::clip_sgd_update_inplace_cuda);
}
#endif
