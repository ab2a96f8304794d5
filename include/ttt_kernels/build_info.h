#pragma once
// What this build of libttt_kernels.so contains; printed by ttt_kernels.info().
#include <string>

namespace ttt {

struct BuildInfo {
  std::string version;        // package version
  std::string torch_version;  // torch the library was compiled against
  std::string cpu_isa;        // vector ISA the CPU kernels were compiled for, e.g. "x86-64 AVX-512 (F BW VL VNNI)"
  bool cuda_kernels = false;  // CUDA kernels compiled into the library
  std::string cuda_archs;     // comma-separated SM targets of those kernels, e.g. "80,90a"
  bool cuda_dispatch = false; // CUDA implementations registered with torch's dispatcher
  bool simulator = false;     // the CUDA simulator (kernels compiled for the CPU) is built in
};

BuildInfo build_info();

}  // namespace ttt
