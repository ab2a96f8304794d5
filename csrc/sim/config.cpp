// The simulator's configuration (include/ttt_kernels/sim/config.h).
#include "ttt_kernels/sim/config.h"

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ttt::sim {
namespace {
// Per thread: a thread inside ttt_kernels.sim.enabled() routes its own ops to the simulator, never another
// thread's (launches read the configuration in the thread that launches).
thread_local Config current_config;
thread_local std::vector<GlobalBuffer> current_buffers;
}  // namespace

Config config() { return current_config; }

void set_config(const Config& config) {
  if (config.num_workers < 0) {
    throw std::invalid_argument("ttt::sim::set_config: num_workers must be >= 0 (0: one per core), got " +
                                std::to_string(config.num_workers));
  }
  current_config = config;
}

LaunchBuffers::LaunchBuffers() : outer_count_(current_buffers.size()) {}

LaunchBuffers::~LaunchBuffers() { current_buffers.resize(outer_count_); }

void LaunchBuffers::add(GlobalBuffer buffer) { current_buffers.push_back(std::move(buffer)); }

std::vector<GlobalBuffer> launch_buffers() { return current_buffers; }

const char* schedule_name(Schedule schedule) {
  switch (schedule) {
    case Schedule::InOrder:
      return "in_order";
    case Schedule::Reverse:
      return "reverse";
    case Schedule::Shuffle:
      return "shuffle";
  }
  return "unknown";
}

}  // namespace ttt::sim
