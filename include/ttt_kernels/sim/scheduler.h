// Simulator internals: execution of thread blocks on fibers (csrc/sim/scheduler.cpp), used by the launch
// (csrc/sim/launch.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ttt_kernels/sim/config.h"
#include "ttt_kernels/sim/runtime.h"

namespace ttt::sim::detail {

struct BlockState;

// Runs blocks of one launch on the calling OS thread; each worker thread of a launch has one. It owns the fibers'
// stacks and the dynamic shared memory (with its redzones), which every block it runs reuses.
class Worker {
 public:
  // `buffers`: the launch's global buffers (LaunchBuffers), which must outlive the worker.
  Worker(const KernelLaunch& launch, const Config& config, const std::vector<GlobalBuffer>& buffers);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs block `block` (linear index, x fastest) to completion. Returns "" or the error that stopped the block,
  // prefixed with the block (and thread) ids; the block is then abandoned.
  std::string run_block(uint64_t block);

 private:
  std::unique_ptr<BlockState> state_;
};

// Adds `instructions` (note_instruction's) to what kernel `kernel` has executed (csrc/sim/launch.cpp).
void record_instructions(const void* kernel, const std::vector<const char*>& instructions);

// Whether the calling code runs as a simulated CUDA thread.
bool in_simulated_thread();

}  // namespace ttt::sim::detail
