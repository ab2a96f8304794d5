// torch glue of the device/arch.h self-test kernels (include/ttt_kernels/arch_selftest.h):
//
//   ttt_kernels::_arch_selftest(str kernel, Tensor[] args) -> ()
//     "mma", "mma_trans"             args = [a, b, c, d, d16]: a [16, 16] and b ([8, 16], or [16, 8] for mma_trans)
//                                    bf16 or fp16, c [16, 8] float32; writes d [16, 8] float32 = A @ B + c and d16, d
//                                    rounded to a's dtype
//     "ldmatrix_x{1,2,4}[_trans]"    args = [src int16 [8 * num, 8], out int32 [32, num]]
//     "cp_async_ca{4,8,16}", "cp_async_cg16"
//                                    args = [src uint8 [64 * bytes], valid_bytes (0-dim int64), out uint8
//                                    [3, 64 * bytes]]
// On CPU tensors it runs the simulated kernel (ttt::cuda_sim) under the current simulator configuration's schedule;
// on CUDA tensors the real one. All tensors contiguous, on one device; outputs are written in place.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <string_view>

#include "arch_selftest.h"

#ifdef TTT_KERNELS_WITH_SIM
#include "selftest_buffers.h"
#endif

#ifdef TTT_KERNELS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ttt {
namespace {

struct ArchSelftestLaunchers {
  void (*mma)(const ArchMmaSelftestParams&, void*);
  void (*ldmatrix)(const ArchLdmatrixSelftestParams&, void*);
  void (*cp_async)(const ArchCpAsyncSelftestParams&, void*);
};

void check_arg(const at::Tensor& t, std::string_view kernel, const char* name, at::ScalarType dtype,
               at::IntArrayRef shape, const c10::Device& device) {
  const std::string where = "_arch_selftest(" + std::string(kernel) + "): " + name;
  TORCH_CHECK(t.scalar_type() == dtype, where, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, where, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), where, " must be contiguous");
  TORCH_CHECK(t.device() == device, where, " must be on ", device, " (the device of args[0]), got ", t.device());
}

void check_count(at::TensorList args, std::string_view kernel, size_t expected, const char* names) {
  TORCH_CHECK(args.size() == expected, "_arch_selftest(", kernel, "): expected ", expected, " tensors ", names,
              ", got ", args.size());
}

[[maybe_unused]] void run(std::string_view kernel, at::TensorList args, const ArchSelftestLaunchers& launchers,
                          void* stream) {
  TORCH_CHECK(!args.empty(), "_arch_selftest(", kernel, "): args must not be empty");
  const c10::Device device = args[0].device();

  if (kernel == "mma" || kernel == "mma_trans") {
    check_count(args, kernel, 5, "[a, b, c, d, d16]");
    const bool trans = kernel == "mma_trans";
    const at::ScalarType elem = args[0].scalar_type();
    TORCH_CHECK(elem == at::kBFloat16 || elem == at::kHalf, "_arch_selftest(", kernel,
                "): a must be bfloat16 or float16, got ", elem);
    check_arg(args[0], kernel, "a", elem, {16, 16}, device);
    check_arg(args[1], kernel, "b", elem, trans ? at::IntArrayRef{16, 8} : at::IntArrayRef{8, 16}, device);
    check_arg(args[2], kernel, "c", at::kFloat, {16, 8}, device);
    check_arg(args[3], kernel, "d", at::kFloat, {16, 8}, device);
    check_arg(args[4], kernel, "d16", elem, {16, 8}, device);
    ArchMmaSelftestParams p;
    p.a = args[0].data_ptr();
    p.b = args[1].data_ptr();
    p.c = args[2].data_ptr<float>();
    p.d = args[3].data_ptr<float>();
    p.d16 = args[4].data_ptr();
    p.bf16 = elem == at::kBFloat16;
    p.trans = trans;
    launchers.mma(p, stream);
    return;
  }

  for (const int num : {1, 2, 4}) {
    for (const bool trans : {false, true}) {
      if (kernel != "ldmatrix_x" + std::to_string(num) + (trans ? "_trans" : "")) continue;
      check_count(args, kernel, 2, "[src, out]");
      check_arg(args[0], kernel, "src", at::kShort, {8 * num, 8}, device);
      check_arg(args[1], kernel, "out", at::kInt, {32, num}, device);
      ArchLdmatrixSelftestParams p;
      p.src = static_cast<const uint16_t*>(args[0].data_ptr());
      p.out = static_cast<uint32_t*>(args[1].data_ptr());
      p.num = num;
      p.trans = trans;
      launchers.ldmatrix(p, stream);
      return;
    }
  }

  struct CpAsyncKernel {
    const char* name;
    int bytes;
    bool cache_global;
  };
  static constexpr CpAsyncKernel kCpAsyncKernels[] = {
      {"cp_async_ca4", 4, false},
      {"cp_async_ca8", 8, false},
      {"cp_async_ca16", 16, false},
      {"cp_async_cg16", 16, true},
  };
  for (const auto& [name, bytes, cache_global] : kCpAsyncKernels) {
    if (kernel != name) continue;
    check_count(args, kernel, 3, "[src, valid_bytes, out]");
    const int64_t total = 64 * bytes;
    check_arg(args[0], kernel, "src", at::kByte, {total}, device);
    check_arg(args[2], kernel, "out", at::kByte, {3, total}, device);
    const at::Tensor& valid = args[1];
    TORCH_CHECK(valid.dim() == 0 && valid.scalar_type() == at::kLong, "_arch_selftest(", kernel,
                "): valid_bytes must be a 0-dim int64 tensor, got ", valid.scalar_type(), " of shape ", valid.sizes());
    ArchCpAsyncSelftestParams p;
    p.src = args[0].data_ptr<uint8_t>();
    p.out = args[2].data_ptr<uint8_t>();
    p.bytes = bytes;
    p.cache_global = cache_global;
    p.valid_bytes = static_cast<int>(valid.item<int64_t>());
    launchers.cp_async(p, stream);
    return;
  }

  TORCH_CHECK(false, "_arch_selftest: unknown kernel '", kernel,
              "'; expected mma, mma_trans, ldmatrix_x{1,2,4}[_trans], cp_async_ca{4,8,16} or cp_async_cg16");
}

void arch_selftest_cpu(std::string_view kernel, [[maybe_unused]] at::TensorList args) {
#ifdef TTT_KERNELS_WITH_SIM
  const ArchSelftestLaunchers sim = {&cuda_sim::arch_selftest_mma, &cuda_sim::arch_selftest_ldmatrix,
                                     &cuda_sim::arch_selftest_cp_async};
  sim::LaunchBuffers buffers;
  declare_selftest_buffers(buffers, args);
  run(kernel, args, sim, nullptr);
#else
  TORCH_CHECK(false, "_arch_selftest(", kernel, ") on CPU tensors needs the CUDA simulator, and this build of "
              "ttt_kernels has none (TTT_KERNELS_SIM=OFF)");
#endif
}

#ifdef TTT_KERNELS_WITH_CUDA
void arch_selftest_cuda(std::string_view kernel, at::TensorList args) {
  TORCH_CHECK(!args.empty(), "_arch_selftest(", kernel, "): args must not be empty");
  const c10::cuda::CUDAGuard guard(args[0].device());
  const ArchSelftestLaunchers gpu = {&cuda::arch_selftest_mma, &cuda::arch_selftest_ldmatrix,
                                     &cuda::arch_selftest_cp_async};
  run(kernel, args, gpu, c10::cuda::getCurrentCUDAStream().stream());
}
#endif

}  // namespace
}  // namespace ttt

TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) { m.def("_arch_selftest(str kernel, Tensor[] args) -> ()"); }

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) { m.impl("_arch_selftest", &ttt::arch_selftest_cpu); }

#ifdef TTT_KERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) { m.impl("_arch_selftest", &ttt::arch_selftest_cuda); }
#endif
