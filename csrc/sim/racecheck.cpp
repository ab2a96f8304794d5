// The simulator's shared-memory race detector (include/ttt_kernels/sim/racecheck.h has the model).
#include "ttt_kernels/sim/racecheck.h"

#include <algorithm>
#include <cstdio>

namespace ttt::sim::detail {

RaceDetector::RaceDetector(dim3 block)
    : block_(block),
      nthreads_(block.x * block.y * block.z),
      clocks_(std::size_t{nthreads_} * kLanes),
      clock_interval_(nthreads_, 0) {}

void RaceDetector::begin_block() {
  ++interval_;
  first_interval_ = interval_;
}

void RaceDetector::barrier() { ++interval_; }

uint32_t* RaceDetector::clock(unsigned tid) {
  uint32_t* vc = &clocks_[std::size_t{tid} * kLanes];
  if (clock_interval_[tid] != interval_) {
    std::fill(vc, vc + kLanes, 0u);
    vc[tid % kLanes] = 1;
    clock_interval_[tid] = interval_;
  }
  return vc;
}

bool RaceDetector::ordered(unsigned earlier, uint32_t earlier_clock, unsigned tid) {
  return earlier / kLanes == tid / kLanes && clock(tid)[earlier % kLanes] >= earlier_clock;
}

void RaceDetector::join(unsigned warp, unsigned mask) {
  uint32_t joined[kLanes] = {};
  for (unsigned lane = 0; lane < kLanes; ++lane) {
    if (!((mask >> lane) & 1u)) continue;
    const uint32_t* vc = clock(warp * kLanes + lane);
    for (unsigned i = 0; i < kLanes; ++i) joined[i] = std::max(joined[i], vc[i]);
  }
  for (unsigned lane = 0; lane < kLanes; ++lane) {
    if ((mask >> lane) & 1u) std::copy(joined, joined + kLanes, clock(warp * kLanes + lane));
  }
}

void RaceDetector::tick(unsigned warp, unsigned mask) {
  for (unsigned lane = 0; lane < kLanes; ++lane) {
    if ((mask >> lane) & 1u) ++clock(warp * kLanes + lane)[lane];
  }
}

std::string RaceDetector::thread_name(unsigned tid) const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "thread (%u,%u,%u)", tid % block_.x, (tid / block_.x) % block_.y,
                tid / (block_.x * block_.y));
  return buf;
}

std::string RaceDetector::report(const char* hazard, unsigned tid, bool writes, std::size_t offset, std::size_t n,
                                 const char* where, const void* base, const std::string& conflict) const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "shared-memory race (%s): %s %s bytes [%zu, %zu) of %s (address %p) ", hazard,
                thread_name(tid).c_str(), writes ? "writes" : "reads", offset, offset + n, where,
                static_cast<const void*>(static_cast<const unsigned char*>(base) + offset));
  return buf + conflict + " (" + std::to_string(barriers()) + " barriers of the block released so far)";
}

std::string RaceDetector::access(SharedShadow& shadow, unsigned tid, std::size_t offset, std::size_t n,
                                 AccessKind kind, const char* where, const void* base) {
  const unsigned warp = tid / kLanes;
  const unsigned lane = tid % kLanes;
  const uint32_t own = clock(tid)[lane];
  const bool writes = kind != AccessKind::Read;
  for (std::size_t i = offset; i < offset + n; ++i) {
    SharedShadow::Byte& s = shadow.bytes_[i];
    if (s.write_interval >= first_interval_) {
      if (s.pending) {
        if (s.writer == tid) {
          return report("access during its own cp.async", tid, writes, offset, n, where, base,
                        "while its own cp.async copy to them is in flight: no cp.async.wait_group has completed it");
        }
        return report(writes ? "write during a cp.async" : "read during a cp.async", tid, writes, offset, n, where,
                      base,
                      "while the cp.async copy of " + thread_name(s.writer) +
                          " to them is in flight (until that thread's cp.async.wait_group completes it)");
      }
      const bool both_atomic = s.atomic && kind == AccessKind::Atomic;
      if (s.writer != tid && s.write_interval == interval_ && !both_atomic && !ordered(s.writer, s.write_clock, tid)) {
        return report(writes ? "write after write" : "read after write", tid, writes, offset, n, where, base,
                      "that " + thread_name(s.writer) +
                          " wrote, with no __syncthreads or warp collective ordering the two accesses");
      }
    }
    if (writes) {
      if (s.read_interval == interval_) {
        if (s.read_warp != warp) {  // kSeveralWarps included
          return report("write after read", tid, true, offset, n, where, base,
                        "that threads of another warp read (" + thread_name(s.first_reader) +
                            " among them), with no __syncthreads ordering the accesses");
        }
        const uint32_t* vc = clock(tid);
        for (unsigned l = 0; l < kLanes; ++l) {
          if (l != lane && ((s.read_lanes >> l) & 1u) && vc[l] < s.read_clock) {
            return report("write after read", tid, true, offset, n, where, base,
                          "that " + thread_name(warp * kLanes + l) +
                              " read, with no __syncthreads or warp collective ordering the two accesses");
          }
        }
      }
      s.writer = static_cast<uint16_t>(tid);
      s.write_interval = interval_;
      s.write_clock = own;
      s.pending = kind == AccessKind::AsyncWrite;
      s.atomic = kind == AccessKind::Atomic;
      s.read_interval = 0;
      continue;
    }
    if (s.read_interval != interval_) {
      s.read_interval = interval_;
      s.read_warp = static_cast<uint16_t>(warp);
      s.read_lanes = 1u << lane;
      s.read_clock = own;
      s.first_reader = static_cast<uint16_t>(tid);
    } else if (s.read_warp != warp) {  // kSeveralWarps included
      s.read_warp = kSeveralWarps;
    } else {
      // One warp's readers: the new read replaces them when they are all ordered before it (later writes need only
      // be ordered after it, then), else it joins them.
      const uint32_t* vc = clock(tid);
      bool all_before = true;
      for (unsigned l = 0; l < kLanes && all_before; ++l) {
        if (l != lane && ((s.read_lanes >> l) & 1u)) all_before = vc[l] >= s.read_clock;
      }
      if (all_before) {
        s.read_lanes = 1u << lane;
        s.read_clock = own;
        s.first_reader = static_cast<uint16_t>(tid);
      } else {
        s.read_lanes |= 1u << lane;
        s.read_clock = std::max(s.read_clock, own);
      }
    }
  }
  return "";
}

void RaceDetector::complete_async(SharedShadow& shadow, unsigned tid, std::size_t offset, std::size_t n) {
  const uint32_t own = clock(tid)[tid % kLanes];
  for (std::size_t i = offset; i < offset + n; ++i) {
    SharedShadow::Byte& s = shadow.bytes_[i];
    if (s.pending && s.writer == tid && s.write_interval >= first_interval_) {
      s.pending = false;
      s.atomic = false;
      s.write_interval = interval_;
      s.write_clock = own;
      s.read_interval = 0;
    }
  }
}

}  // namespace ttt::sim::detail
