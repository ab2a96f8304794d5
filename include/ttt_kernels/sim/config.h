// Configuration of the CUDA simulator (docs/simulator.md). Torch-free and CUDA-free: op glue includes it to decide
// whether CPU tensors go to the CPU kernel or to the simulated CUDA kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
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
  // Every load and store of the kernels is checked: shared-memory races (racecheck.h) and accesses outside the
  // launch's shared memory and global buffers. Off: only the checks at barriers and collectives remain.
  bool memcheck = true;
};

// The configuration of the calling thread (each thread has its own, initially disabled). A launch reads it once, when
// it starts, in the launching thread.
Config config();
void set_config(const Config& config);

const char* schedule_name(Schedule schedule);  // "in_order", "reverse", "shuffle"

// A span of global memory the kernels of a launch may access: a tensor's elements, named after the op's argument.
struct GlobalBuffer {
  std::string name;
  const void* data = nullptr;
  std::size_t bytes = 0;
};

// While alive, the simulated launches of the calling thread know the buffers added to it (plus those of enclosing
// scopes): a kernel access outside all of them but less than 64 KiB from one of them fails the launch, naming the
// buffer. Op glue declares every tensor it passes to its kernels, so that an off-by-one row or a partial tile read
// past the end is an error rather than a read of the neighbouring heap bytes (docs/simulator.md).
class LaunchBuffers {
 public:
  LaunchBuffers();
  ~LaunchBuffers();
  void add(GlobalBuffer buffer);  // one more, until this scope ends
  LaunchBuffers(const LaunchBuffers&) = delete;
  LaunchBuffers& operator=(const LaunchBuffers&) = delete;

 private:
  std::size_t outer_count_;  // the calling thread's buffers before this scope
};

// The buffers declared by the calling thread's live LaunchBuffers scopes.
std::vector<GlobalBuffer> launch_buffers();

// The demangled names of the kernels launched in this process so far (each once), for the coverage report of the
// tests (tests/conftest.py: every kernel nvcc compiled must have run in the simulator).
std::vector<std::string> launched_kernels();

// Per kernel launched so far (demangled name), the PTX instructions of device/arch.h it executed (mma, ldmatrix,
// cp.async variants; ttt::sim::note_instruction): the tests compare them with the kernel's SASS.
std::vector<std::pair<std::string, std::vector<std::string>>> executed_instructions();

}  // namespace ttt::sim
