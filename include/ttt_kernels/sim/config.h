// Configuration of the CUDA simulator (docs/simulator.md). Torch-free and CUDA-free: op glue includes it to decide
// whether CPU tensors go to the CPU kernel or to the simulated CUDA kernel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ttt::sim {

// Order in which the runnable threads of a block are resumed after each barrier. A kernel whose result depends on
// it has a race: tests run kernels under several schedules and require bit-identical outputs.
enum class Schedule {
  InOrder,  // thread 0, 1, 2, ... (linear thread index)
  Reverse,  // the last thread first
  Shuffle,  // a new random permutation at every barrier, deterministic in (seed, block index)
};

struct Config {
  bool enabled = false;  // ops on CPU tensors run the simulated CUDA kernel instead of the CPU kernel
  Schedule schedule = Schedule::InOrder;
  uint64_t seed = 0;    // seed of Schedule::Shuffle
  int num_workers = 0;  // OS threads running blocks; 0: std::thread::hardware_concurrency()
};

// The configuration of the calling thread (each thread has its own, initially disabled). A launch reads it once, when
// it starts, in the launching thread.
Config config();
void set_config(const Config& config);

const char* schedule_name(Schedule schedule);  // "in_order", "reverse", "shuffle"

// The demangled names of the kernels launched in this process so far (each once), for the coverage report of the
// tests (tests/conftest.py: every kernel nvcc compiled must have run in the simulator).
std::vector<std::string> launched_kernels();

}  // namespace ttt::sim
