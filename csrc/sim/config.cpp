// The simulator's configuration (include/ttt_kernels/sim/config.h).
#include "ttt_kernels/sim/config.h"

#include <mutex>
#include <stdexcept>
#include <string>

namespace ttt::sim {
namespace {
std::mutex config_mutex;
Config current_config;
}  // namespace

Config config() {
  std::lock_guard<std::mutex> lock(config_mutex);
  return current_config;
}

void set_config(const Config& config) {
  if (config.num_workers < 0) {
    throw std::invalid_argument("ttt::sim::set_config: num_workers must be >= 0 (0: one per core), got " +
                                std::to_string(config.num_workers));
  }
  std::lock_guard<std::mutex> lock(config_mutex);
  current_config = config;
}

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
