// Helpers shared by the torch glue of every op (csrc/ops/*.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "ttt_kernels/dtype.h"

// What an op's dispatch needs of the optional backends: the simulator's schedule, the CUDA device guard and stream.
#if defined(TTT_KERNELS_WITH_SIM)
#include "ttt_kernels/sim/config.h"
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <sstream>
#if defined(TTT_KERNELS_WITH_NVTX)
#include <nvtx3/nvToolsExt.h>
#endif
#endif

namespace ttt::ops {

// The kernels' DType of a float32 / float64 / bfloat16 / float16 tensor; any other dtype fails with
// "<op>: <arg> must be float32, float64, bfloat16 or float16, got <dtype>".
inline DType to_dtype(const char* op, const char* arg, at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kDouble:
      return DType::kFloat64;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float64, bfloat16 or float16, got ", t);
  }
}

// Per-row statistics (RMSNorm's rstd, attention's lse) are float64 for float64 inputs and float32 otherwise.
inline at::ScalarType stats_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A kernel's workspace: `bytes` bytes (what its *_workspace_bytes query returned) on `like`'s device.
inline at::Tensor workspace(int64_t bytes, const at::Tensor& like) {
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

// The memory a simulated launch may access: the tensors (and host tables) the op passes to its kernels, named after
// its arguments, for the simulator's global-memory bounds checks (sim::LaunchBuffers, docs/simulator.md). Every op's
// device path declares them before its launches; nothing is recorded unless the calling thread runs ops in the
// simulator, and the CUDA build keeps only an empty shell.
class SimBuffers {
 public:
  // The pairs refer to the caller's tensors (no reference-count traffic on the CPU path, which builds one per call).
  SimBuffers(std::initializer_list<std::pair<const char*, const at::Tensor&>> tensors = {}) {
#if defined(TTT_KERNELS_WITH_SIM)
    if (sim::config().enabled) scope_.emplace();
#endif
    for (const auto& [name, t] : tensors) add(name, t);
  }

  // A tensor's span [data, last element]; nothing for an undefined or empty tensor. Strides are >= 0 (op glue
  // hands kernels no others).
  void add(const std::string& name, const at::Tensor& t) {
    if (!recording() || !t.defined() || t.numel() == 0) return;
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    add(name, t.data_ptr(), static_cast<std::size_t>((last + 1) * static_cast<int64_t>(t.element_size())));
  }

#if defined(TTT_KERNELS_WITH_SIM)
  void add(const std::string& name, const void* data, std::size_t bytes) {
    if (scope_) scope_->add(sim::GlobalBuffer{name, data, bytes});
  }

 private:
  bool recording() const { return scope_.has_value(); }
  std::optional<sim::LaunchBuffers> scope_;
#else
  void add(const std::string&, const void*, std::size_t) {}

 private:
  static bool recording() { return false; }
#endif
};

#if defined(TTT_KERNELS_WITH_CUDA)
// An NVTX range around a CUDA op's launches, named after the op and its shape class: the parts are streamed after
// the op's name, e.g. NvtxRange("swa_fwd", ' ', q.scalar_type(), " hd", 64, " w", 256) -> "swa_fwd BFloat16 hd64
// w256". In an Nsight Systems timeline each op's kernels sit under their range and `nsys stats --report nvtx_sum`
// totals them per shape class (docs/profiling.md). Nothing is done in a build without the nvtx3 headers.
class NvtxRange {
 public:
  template <typename... Parts>
  explicit NvtxRange([[maybe_unused]] const char* op, [[maybe_unused]] const Parts&... parts) {
#if defined(TTT_KERNELS_WITH_NVTX)
    std::ostringstream name;
    name << op;
    (name << ... << parts);
    nvtxRangePushA(name.str().c_str());
#endif
  }
  ~NvtxRange() {
#if defined(TTT_KERNELS_WITH_NVTX)
    nvtxRangePop();
#endif
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
#endif

}  // namespace ttt::ops
