// torch glue of the CUDA simulator's self-test kernels (include/ttt_kernels/sim_selftest.h lists them):
//
//   ttt_kernels::_sim_selftest(str kernel, Tensor(a!)[] args, int[] launch_config) -> ()
//     launch_config = [grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic smem bytes, kernel ints...]
//
// On CPU tensors it launches the simulated kernel (ttt::cuda_sim) under the simulator's current configuration
// (schedule, seed, workers; `enabled` is not needed: these kernels have no CPU implementation); on CUDA tensors the
// real one. Tensors must be contiguous and on one device; the kernels write their outputs in place. A kernel error
// found by the simulator raises RuntimeError naming the kernel, the launch, the block and the threads.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "sim_selftest.h"

#if defined(TTT_KERNELS_WITH_SIM)
#include "selftest_buffers.h"
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ttt {
namespace {

constexpr size_t kShapeInts = 7;  // grid (3), block (3), dynamic shared memory bytes

char dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return 'f';
    case at::kDouble:
      return 'd';
    case at::kInt:
      return 'i';
    case at::kHalf:
      return 'h';
    case at::kBFloat16:
      return 'b';
    default:
      return '?';
  }
}

using Launcher = void (*)(const char*, const SimSelftestArgs&, void*);

[[maybe_unused]] void run(std::string_view kernel_name, at::TensorList args, c10::IntArrayRef launch_config,
                          Launcher launcher, void* stream) {
  const std::string kernel(kernel_name);
  const std::string op = "_sim_selftest(" + kernel + ")";
  TORCH_CHECK(!args.empty(), op, ": args must not be empty");
  TORCH_CHECK(launch_config.size() >= kShapeInts, op,
              ": launch_config must start with [grid.x, grid.y, grid.z, block.x, block.y, block.z, smem_bytes], got ",
              launch_config);
  std::vector<void*> buffers;
  std::string dtypes;
  std::vector<int64_t> numels;
  for (size_t i = 0; i < args.size(); ++i) {
    const at::Tensor& t = args[i];
    TORCH_CHECK(t.is_contiguous(), op, ": args[", i, "] must be contiguous");
    TORCH_CHECK(t.device() == args[0].device(), op, ": args[", i, "] must be on ", args[0].device(), ", got ",
                t.device());
    buffers.push_back(t.data_ptr());
    dtypes.push_back(dtype_code(t.scalar_type()));
    numels.push_back(t.numel());
  }
  for (size_t i = 0; i < 6; ++i) {
    TORCH_CHECK(launch_config[i] >= 0 && launch_config[i] <= UINT32_MAX, op, ": launch_config[", i,
                "] must be in [0, 2^32), got ", launch_config[i]);
  }
  TORCH_CHECK(launch_config[6] >= 0, op, ": the shared memory size launch_config[6] must be >= 0, got ",
              launch_config[6]);

  SimSelftestArgs a;
  a.buffers = buffers.data();
  a.dtypes = dtypes.c_str();
  a.numels = numels.data();
  a.num_buffers = static_cast<int>(buffers.size());
  a.ints = launch_config.data() + kShapeInts;
  a.num_ints = static_cast<int>(launch_config.size() - kShapeInts);
  for (int i = 0; i < 3; ++i) {
    a.grid[i] = static_cast<unsigned>(launch_config[i]);
    a.block[i] = static_cast<unsigned>(launch_config[3 + i]);
  }
  a.smem_bytes = launch_config[6];
  try {
    launcher(kernel.c_str(), a, stream);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void sim_selftest_cpu(std::string_view kernel, at::TensorList args, c10::IntArrayRef launch_config) {
#if defined(TTT_KERNELS_WITH_SIM)
  sim::LaunchBuffers buffers;
  declare_selftest_buffers(buffers, args);
  run(kernel, args, launch_config, &cuda_sim::sim_selftest, nullptr);
#else
  (void)args;
  (void)launch_config;
  TORCH_CHECK(false, "_sim_selftest(", kernel, ") on CPU tensors needs the CUDA simulator, and this build of "
              "ttt_kernels has none (TTT_KERNELS_SIM=OFF)");
#endif
}

#if defined(TTT_KERNELS_WITH_CUDA)
void sim_selftest_cuda(std::string_view kernel, at::TensorList args, c10::IntArrayRef launch_config) {
  TORCH_CHECK(!args.empty(), "_sim_selftest(", kernel, "): args must not be empty");
  const c10::cuda::CUDAGuard guard(args[0].device());
  run(kernel, args, launch_config, &cuda::sim_selftest, c10::cuda::getCurrentCUDAStream().stream());
}
#endif

}  // namespace
}  // namespace ttt

TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def("_sim_selftest(str kernel, Tensor(a!)[] args, int[] launch_config) -> ()");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) { m.impl("_sim_selftest", &ttt::sim_selftest_cpu); }

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) { m.impl("_sim_selftest", &ttt::sim_selftest_cuda); }
#endif
