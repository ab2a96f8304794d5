// Simulator internals: the shared-memory race detector (csrc/sim/racecheck.cpp), used by the block scheduler.
//
// Deterministic, like compute-sanitizer's racecheck but independent of the order in which the simulator happens to
// run the threads: every access to shared memory is compared with the earlier accesses to the same bytes, and two
// accesses by different threads, at least one a write, conflict unless something orders them:
// - a __syncthreads between them (each barrier starts a new *interval*; accesses of earlier intervals are ordered
//   before every later one);
// - within an interval, a chain of warp collectives (__syncwarp, shuffles, votes, mma, ldmatrix): each thread
//   carries a vector clock over the 32 lanes of its warp, joined across the lanes of every completed collective, so
//   a collective orders its lanes' earlier accesses before their later ones, and nothing across warps;
// - a cp.async copy writes its destination from its issue until the issuing thread's cp.async.wait_group completes
//   it: any access to those bytes in between (the issuing thread's included) is a hazard, and the write counts as
//   the issuing thread's at the wait.
// Per byte of shared memory the detector keeps the last write (thread, interval, clock) and the reads since (one
// warp's lanes with their largest clock, or "several warps"), so a report names both threads, the bytes and the
// hazard. Reads of one warp are summarized by their largest clock, which can only report more conflicts, never
// fewer (docs/simulator.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ttt_kernels/sim/vector_types.h"

namespace ttt::sim::detail {

// Atomic: a read-modify-write that races with the plain accesses of other threads but not with their atomics.
enum class AccessKind : uint8_t { Read, Write, AsyncWrite, Atomic };

// The access history of one span of shared memory (the dynamic shared memory, or the static __shared__
// variables), one entry per byte.
class SharedShadow {
 public:
  explicit SharedShadow(std::size_t bytes = 0) : bytes_(bytes) {}

 private:
  friend class RaceDetector;
  struct Byte {
    uint32_t write_interval = 0;  // interval of the last write; older than the block's first: never written
    uint32_t write_clock = 0;     // the writer's own clock at the write
    uint32_t read_interval = 0;   // interval of the reads since that write
    uint32_t read_clock = 0;      // the largest of the readers' own clocks
    uint32_t read_lanes = 0;      // the readers: lanes of read_warp
    uint16_t writer = 0;          // linear thread id
    uint16_t read_warp = 0;       // kSeveralWarps: readers in more than one warp
    uint16_t first_reader = 0;    // a reader, for messages
    bool pending = false;         // a cp.async of `writer` still writes this byte
    bool atomic = false;          // the last write was an atomic
  };
  std::vector<Byte> bytes_;
};

class RaceDetector {
 public:
  // `block`: the block's shape, for thread ids in messages.
  explicit RaceDetector(dim3 block);

  // A new block: every earlier access is forgotten.
  void begin_block();
  // A __syncthreads has been released: every access so far is ordered before every later one.
  void barrier();
  // A warp collective of warp `warp` over lanes `mask` completes: join() before its combine runs (so the combine's
  // accesses, made in the completing lane's name, are ordered after all the lanes' earlier ones), tick() after.
  void join(unsigned warp, unsigned mask);
  void tick(unsigned warp, unsigned mask);

  // Checks thread `tid`'s access to bytes [offset, offset + n) of `shadow` against the earlier accesses and records
  // it. Returns "" or the hazard, naming the other thread and the bytes; `where` names the memory (e.g. "the
  // dynamic shared memory") and `base` is the address of `shadow`'s byte 0, for the message.
  std::string access(SharedShadow& shadow, unsigned tid, std::size_t offset, std::size_t n, AccessKind kind,
                     const char* where, const void* base);
  // Thread `tid`'s cp.async.wait_group has completed its copy to [offset, offset + n): the write happens now.
  void complete_async(SharedShadow& shadow, unsigned tid, std::size_t offset, std::size_t n);

  // Barriers released in this block so far (for messages).
  unsigned barriers() const { return interval_ - first_interval_; }

 private:
  static constexpr unsigned kLanes = 32;
  static constexpr uint16_t kSeveralWarps = UINT16_MAX;

  // Thread tid's vector clock over its warp's lanes in the current interval (reset lazily at each barrier: its own
  // entry starts at 1, the others at 0).
  uint32_t* clock(unsigned tid);
  // Whether thread `earlier`'s access at its own clock `earlier_clock` (in the current interval) is ordered before
  // thread tid's next access.
  bool ordered(unsigned earlier, uint32_t earlier_clock, unsigned tid);
  std::string thread_name(unsigned tid) const;
  // "shared-memory race (<hazard>): thread (x,y,z) reads bytes [a, b) of <where> (address p) <conflict> (...)".
  std::string report(const char* hazard, unsigned tid, bool writes, std::size_t offset, std::size_t n,
                     const char* where, const void* base, const std::string& conflict) const;

  dim3 block_;
  unsigned nthreads_;
  uint32_t interval_ = 0;        // the current barrier interval; numbers keep growing across blocks
  uint32_t first_interval_ = 1;  // the first interval of the running block
  std::vector<uint32_t> clocks_;          // nthreads x kLanes
  std::vector<uint32_t> clock_interval_;  // the interval each thread's clock belongs to
};

}  // namespace ttt::sim::detail
