// What the ops' C++ autograd formulas share (torch::autograd::Function, registered at the Autograd key in each op's
// glue file).
//
// The formulas of the ops the model calls per chunk are C++: a C++ autograd node costs a few microseconds per call,
// where torch.library's Python one (register_autograd) costs about 15 in the forward and 20 in the backward, and the
// meta step calls these ops hundreds of times (docs/model.md). Formulas of higher orders, called rarely, stay Python
// (python/ttt_kernels/ops/<stem>.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

namespace ttt::ops {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dispatcher's handle of the op `name` ("ttt_kernels::<op>") typed as Sig, its kernels' C++ signature. A formula
// calls ops through the dispatcher, not the kernels: in a backward pass that builds a graph (create_graph), each
// call then records its own backward node, so gradients of gradients work; and a forward redispatches below the
// autograd key (at::AutoDispatchBelowADInplaceOrView) to the CPU or CUDA kernel.
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// An optional tensor saved for the backward (save_for_backward takes an undefined tensor for an absent one), back
// as an optional.
inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// A cotangent for a kernel that takes contiguous tensors, or nullopt when the engine passed none (formulas set
// materialize_grads to false: an output that does not reach the loss gets no zero tensor).
inline std::optional<at::Tensor> contiguous_cotangent(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t.contiguous()) : std::nullopt;
}

}  // namespace ttt::ops
