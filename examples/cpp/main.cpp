// Two ways to call ttt_kernels from C++ (examples/cpp/CMakeLists.txt builds it against the installed package):
//  1. a CPU kernel directly, through its params struct (plain arrays, no tensors);
//  2. an op through the torch dispatcher (the registration that Python's torch.ops.ttt_kernels uses), on tensors.
// Both RMSNorms are checked against the formula; the program exits non-zero on a mismatch.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>
#include <vector>

#include "ttt_kernels/build_info.h"
#include "ttt_kernels/rms_norm.h"

namespace {

constexpr int64_t kRows = 3;
constexpr int64_t kDim = 97;
constexpr double kEps = 1e-6;

// out = weight * x / sqrt(mean(x^2) + eps) of one row, in double.
double expected(const float* x, const float* weight, int64_t i) {
  double sumsq = 0;
  for (int64_t j = 0; j < kDim; ++j) sumsq += double(x[j]) * x[j];
  return weight[i] * x[i] / std::sqrt(sumsq / kDim + kEps);
}

double max_error(const float* x, const float* weight, const float* out) {
  double err = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t i = 0; i < kDim; ++i) {
      err = std::max(err, std::abs(out[r * kDim + i] - expected(x + r * kDim, weight, i)));
    }
  }
  return err;
}

}  // namespace

int main() {
  const ttt::BuildInfo build = ttt::build_info();
  std::printf("ttt_kernels %s (torch %s)\n", build.version.c_str(), build.torch_version.c_str());
  std::vector<float> x(kRows * kDim), weight(kDim), out(kRows * kDim), rstd(kRows);
  for (int64_t i = 0; i < kRows * kDim; ++i) x[i] = std::sin(0.37 * i) + 0.1f;
  for (int64_t i = 0; i < kDim; ++i) weight[i] = 1.0f + 0.01f * i;

  // 1. The CPU kernel through its params struct.
  ttt::RmsNormParams params;
  params.x = x.data();
  params.weight = weight.data();
  params.out = out.data();
  params.rstd = rstd.data();
  params.rows = kRows;
  params.dim = kDim;
  params.eps = kEps;
  params.dtype = ttt::DType::kFloat32;
  ttt::cpu::rms_norm_fwd(params);
  const double kernel_error = max_error(x.data(), weight.data(), out.data());
  std::printf("ttt::cpu::rms_norm_fwd: max error %.2e\n", kernel_error);

  // 2. The op through the dispatcher, on tensors that view the same arrays.
  const at::Tensor xt = at::from_blob(x.data(), {kRows, kDim}, at::kFloat);
  const at::Tensor wt = at::from_blob(weight.data(), {kDim}, at::kFloat);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("ttt_kernels::rms_norm_fwd", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                          const std::optional<at::Tensor>&,
                                                          const std::optional<at::Tensor>&)>();
  // (x, weight, eps, residual, rope): no residual, no RoPE.
  const auto [out_t, rstd_t] = op.call(xt, wt, kEps, std::nullopt, std::nullopt);
  const double op_error = max_error(x.data(), weight.data(), out_t.contiguous().data_ptr<float>());
  std::printf("torch.ops.ttt_kernels.rms_norm_fwd via the dispatcher: max error %.2e\n", op_error);

  const bool ok = kernel_error < 1e-5 && op_error < 1e-5;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
