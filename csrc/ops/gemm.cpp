// torch glue of the GEMMs of the dynamic MLP's step that have ops of their own: schemas, argument checks, CPU /
// simulator / CUDA dispatch (params: include/ttt_kernels/gemm.h; the glue shared with csrc/ops/swiglu.cpp:
// gemm_glue.h; docs/mlp.md).
//
//   sgd_gemm_update_(weight [M, N] (in place), a [K, M], b [K, N], step []) -> ()     weight -= step * a^T b
//   _mlp_gemm(a, b, d (out), c?, t? (out), epilogue, alpha, beta, scale?) -> ()         the GEMM wrapper, for tests
//
// CPU: the GEMM in float32 (float64 for a float64 weight; cpu_bgemm: the AVX-512 sgemm of csrc/cpu/gemm.cpp or
// BLAS). CUDA (and the simulator, on CPU tensors inside ttt_kernels.sim.enabled()): the CUTLASS wrapper mlp_gemm.
// Fake tensors and the Python API are in python/ttt_kernels/ops/gemm.py.
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <string_view>
#include <utility>

#include "gemm_glue.h"
#include "ttt_kernels/gemm.h"

namespace ttt {
namespace {

using namespace gemm_glue;

// ---- sgd_gemm_update_ -----------------------------------------------------------------------------------------------

// weight [M, N] float32 (float64 on the CPU), a [K, M], b [K, N], step a one-element float32 tensor on the device.
void check_gemm_update(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& step) {
  const char* op = "sgd_gemm_update_";
  TORCH_CHECK(weight.dim() == 2 && a.dim() == 2 && b.dim() == 2, op, ": weight, a and b must be 2-D, got ",
              weight.sizes(), ", ", a.sizes(), ", ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(1) == weight.size(0) && b.size(1) == weight.size(1), op,
              ": need weight [M, N], a [K, M], b [K, N], got ", weight.sizes(), ", ", a.sizes(), ", ", b.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": weight must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK(is_float(a.scalar_type()) && b.scalar_type() == a.scalar_type(), op,
              ": a and b must be float tensors of one dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(step.numel() == 1 && step.scalar_type() == at::kFloat, op,
              ": step must be a one-element float32 tensor, got ", step.sizes(), " ", step.scalar_type());
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"a", a}, {"b", b}, {"step", step}}) {
    TORCH_CHECK(t.device() == weight.device(), op, ": ", name, " must be on weight's device ", weight.device(),
                ", got ", t.device());
  }
  check_contiguous(op, "weight", weight);
}

template <typename Backend>
void gemm_update_device(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& step) {
  const char* op = "sgd_gemm_update_";
  TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": on CUDA weight must be float32, got ", weight.scalar_type());
  TORCH_CHECK(is_16bit(a.scalar_type()), op, ": on CUDA a and b must be bfloat16 or float16, got ", a.scalar_type());
  if (a.size(0) == 0 || weight.numel() == 0) return;
  const at::Tensor ac = aligned_contiguous(a);
  const at::Tensor bc = aligned_contiguous(b);
  const at::Tensor sc = step.contiguous();
  gemm<Backend>(GemmEpilogue::kAccumulate, ac.t(), bc, weight, nullptr, &weight, -1.0f, 1.0f, &sc);
}

void sgd_gemm_update_cpu(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& step) {
  check_gemm_update(weight, a, b, step);
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) return gemm_update_device<SimGemm>(weight, a, b, step);
#endif
  const at::ScalarType wt = weight.scalar_type();
  // weight is contiguous (checked): the GEMM accumulates into it directly (beta = 1), the gradient is never stored.
  at::Tensor w = weight.unsqueeze(0);
  cpu_bgemm(w, a.to(wt).t().unsqueeze(0), b.to(wt).unsqueeze(0), -step.item<double>(), 1.0);
}

// ---- _mlp_gemm ------------------------------------------------------------------------------------------------------

GemmEpilogue epilogue_of(std::string_view name) {
  if (name == "store") return GemmEpilogue::kStore;
  if (name == "swiglu") return GemmEpilogue::kSwiglu;
  if (name == "accumulate") return GemmEpilogue::kAccumulate;
  TORCH_CHECK(false, "_mlp_gemm: epilogue must be 'store', 'swiglu' or 'accumulate', got '", name, "'");
}

template <typename Backend>
void mlp_gemm_op(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const OptTensor& c,
                 const OptTensor& t, std::string_view epilogue, double alpha, double beta, const OptTensor& scale) {
  for (const at::Tensor* x : {&b, &d}) {
    TORCH_CHECK(x->device() == a.device(), "_mlp_gemm: a, b, d, c, t and scale must be on one device");
  }
  TORCH_CHECK(is_16bit(a.scalar_type()) && b.scalar_type() == a.scalar_type(),
              "_mlp_gemm: a and b must be bfloat16 or float16 tensors of one dtype");
  gemm<Backend>(epilogue_of(epilogue), a, b, d, t ? &*t : nullptr, c ? &*c : nullptr, static_cast<float>(alpha),
                static_cast<float>(beta), scale ? &*scale : nullptr);
}

void mlp_gemm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const OptTensor& c,
                  const OptTensor& t, c10::string_view epilogue, double alpha, double beta, const OptTensor& scale) {
#if defined(TTT_KERNELS_WITH_SIM)
  TORCH_CHECK(sim::config().enabled, "_mlp_gemm: the GEMM wrapper of the CUDA kernels runs on CUDA tensors or, for ",
              "CPU tensors, inside ttt_kernels.sim.enabled() (the CUTLASS kernels in the simulator)");
  mlp_gemm_op<SimGemm>(a, b, d, c, t, std::string_view(epilogue.data(), epilogue.size()), alpha, beta, scale);
#else
  (void)a, (void)b, (void)d, (void)c, (void)t, (void)epilogue, (void)alpha, (void)beta, (void)scale;
  TORCH_CHECK(false, "_mlp_gemm: built without the CUDA simulator; CPU tensors are not supported");
#endif
}

// ---- CUDA -----------------------------------------------------------------------------------------------------------

#if defined(TTT_KERNELS_WITH_CUDA)
void sgd_gemm_update_cuda(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                          const at::Tensor& step) {
  check_gemm_update(weight, a, b, step);
  const c10::cuda::CUDAGuard guard(weight.device());
  const ops::NvtxRange range("sgd_gemm_update_", ' ', a.scalar_type());
  gemm_update_device<CudaGemm>(weight, a, b, step);
}

void mlp_gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const OptTensor& c,
                   const OptTensor& t, c10::string_view epilogue, double alpha, double beta, const OptTensor& scale) {
  const c10::cuda::CUDAGuard guard(a.device());
  const ops::NvtxRange range("_mlp_gemm ", std::string_view(epilogue.data(), epilogue.size()), ' ', a.scalar_type());
  mlp_gemm_op<CudaGemm>(a, b, d, c, t, std::string_view(epilogue.data(), epilogue.size()), alpha, beta, scale);
}
#endif

}  // namespace
}  // namespace ttt

// The schemas and the CPU implementations; libttt_kernels_cuda.so compiles this file again for the CUDA ones.
#if !defined(TTT_KERNELS_CUDA_GLUE_ONLY)
TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def("sgd_gemm_update_(Tensor(a!) weight, Tensor a, Tensor b, Tensor step) -> ()");
  m.def(
      "_mlp_gemm(Tensor a, Tensor b, Tensor(a!) d, Tensor? c, Tensor(b!)? t, str epilogue, float alpha, "
      "float beta, Tensor? scale) -> ()");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) {
  m.impl("sgd_gemm_update_", &ttt::sgd_gemm_update_cpu);
  m.impl("_mlp_gemm", &ttt::mlp_gemm_cpu);
}
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("sgd_gemm_update_", &ttt::sgd_gemm_update_cuda);
  m.impl("_mlp_gemm", &ttt::mlp_gemm_cuda);
}
#endif
