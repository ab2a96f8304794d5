// ttt_kernels._C: importing it loads libttt_kernels.so, whose static initializers register every torch op.
// The module itself only exposes build information and, when built, the simulator's configuration.
#include <pybind11/pybind11.h>

#include "ttt_kernels/build_info.h"

#if defined(TTT_KERNELS_WITH_SIM)
namespace ttt::sim {
void bind_python(pybind11::module_& m);
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "ttt_kernels native library";
  m.def("build_info", [] {
    const ttt::BuildInfo info = ttt::build_info();
    pybind11::dict d;
    d["version"] = info.version;
    d["torch_version"] = info.torch_version;
    d["cpu_isa"] = info.cpu_isa;
    d["cuda_kernels"] = info.cuda_kernels;
    d["cuda_archs"] = info.cuda_archs;
    d["cuda_dispatch"] = info.cuda_dispatch;
    d["simulator"] = info.simulator;
    return d;
  });
#if defined(TTT_KERNELS_WITH_SIM)
  ttt::sim::bind_python(m);
#endif
}
