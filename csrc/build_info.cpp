#include "ttt_kernels/build_info.h"

namespace ttt {
namespace {

// Compiled with the same flags as the CPU kernels, so the predefined macros describe their ISA.
std::string compiled_cpu_isa() {
  struct Feature {
    bool present;
    const char* name;
  };
#if defined(__x86_64__)
  const char* base = "x86-64";
#elif defined(__aarch64__)
  const char* base = "aarch64";
#else
  const char* base = "generic";
#endif
  const Feature features[] = {
#if defined(__x86_64__)
      {true, "SSE2"},
#endif
#if defined(__AVX2__)
      {true, "AVX2"},
#endif
#if defined(__FMA__)
      {true, "FMA"},
#endif
#if defined(__AVX512F__)
      {true, "AVX-512F"},
#endif
#if defined(__AVX512BW__)
      {true, "AVX-512BW"},
#endif
#if defined(__AVX512VL__)
      {true, "AVX-512VL"},
#endif
#if defined(__AVX512VNNI__)
      {true, "AVX-512VNNI"},
#endif
#if defined(__AVX512BF16__)
      {true, "AVX-512BF16"},
#endif
#if defined(__ARM_NEON)
      {true, "NEON"},
#endif
#if defined(__ARM_FEATURE_SVE)
      {true, "SVE"},
#endif
      {false, ""},
  };
  std::string isa = base;
  for (const Feature& f : features) {
    if (f.present) isa.append(" ").append(f.name);
  }
  return isa;
}

}  // namespace

BuildInfo build_info() {
  BuildInfo info;
  info.version = TTT_KERNELS_VERSION;
  info.torch_version = TTT_KERNELS_TORCH_VERSION;
  info.cpu_isa = compiled_cpu_isa();
#if defined(TTT_KERNELS_WITH_CUDA_KERNELS)
  info.cuda_kernels = true;
  info.cuda_archs = TTT_KERNELS_CUDA_ARCHS;
#endif
#if defined(TTT_KERNELS_WITH_CUDA_DISPATCH)
  info.cuda_dispatch = true;  // registered by libttt_kernels_cuda.so
#endif
#if defined(TTT_KERNELS_WITH_SIM)
  info.simulator = true;
#endif
  return info;
}

}  // namespace ttt
