// Python bindings of the simulator's configuration, added to ttt_kernels._C by csrc/python_module.cpp and wrapped by
// ttt_kernels.sim (python/ttt_kernels/sim.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "ttt_kernels/sim/config.h"

namespace py = pybind11;

namespace ttt::sim {

void bind_python(py::module_& m) {
  m.def("sim_launched_kernels", &launched_kernels, "The demangled names of the kernels the simulator has launched.");
  m.def("sim_executed_instructions", &executed_instructions,
        "Per launched kernel (demangled name), the device/arch.h PTX instructions it executed.");
  m.def(
      "sim_config",
      [] {
        const Config c = config();
        py::dict d;
        d["enabled"] = c.enabled;
        d["schedule"] = schedule_name(c.schedule);
        d["seed"] = c.seed;
        d["num_workers"] = c.num_workers;
        d["memcheck"] = c.memcheck;
        return d;
      },
      "The CUDA simulator's configuration: a dict with the keyword arguments of sim_set_config.");
  m.def(
      "sim_set_config",
      [](bool enabled, const std::string& schedule, uint64_t seed, int num_workers, bool memcheck) {
        Config c;
        c.enabled = enabled;
        if (schedule == "in_order") {
          c.schedule = Schedule::InOrder;
        } else if (schedule == "reverse") {
          c.schedule = Schedule::Reverse;
        } else if (schedule == "shuffle") {
          c.schedule = Schedule::Shuffle;
        } else {
          throw std::invalid_argument(
              "sim_set_config: schedule must be \"in_order\", \"reverse\" or \"shuffle\", got \"" + schedule + "\"");
        }
        c.seed = seed;
        c.num_workers = num_workers;
        c.memcheck = memcheck;
        set_config(c);
      },
      py::arg("enabled"), py::arg("schedule") = "in_order", py::arg("seed") = 0, py::arg("num_workers") = 0,
      py::arg("memcheck") = true,
      "Sets the CUDA simulator's configuration. enabled: ops on CPU tensors run their simulated CUDA kernel; "
      "schedule: order of a block's threads between barriers; seed: of the \"shuffle\" schedule; num_workers: OS "
      "threads running blocks (0: one per core); memcheck: check every load and store (shared-memory races and "
      "bounds, global buffers).");
}

}  // namespace ttt::sim
