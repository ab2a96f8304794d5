// Execution of thread blocks in the CUDA simulator: one fiber per CUDA thread, cooperative scheduling between
// barriers and warp collectives, and the checks (divergent barriers, warp collectives with missing lanes, shared
// memory races and out-of-bounds accesses, global memory outside the launch's buffers, cp.async copies never waited
// for). docs/simulator.md describes the model.
//
// A block runs on one OS thread. Its threads sit in a run queue in the order of the configured schedule; the running
// thread keeps going until it blocks (barrier, collective) or exits, then switches straight to the next queued
// thread, or back to the worker when the queue is empty. The worker then looks at the block as a whole: all threads
// at __syncthreads releases the barrier (a new phase, re-ordered by the schedule); __activemask waits are answered;
// anything else is a deadlock on hardware and is reported. Errors never unwind a fiber stack: the failing thread
// records the message and switches to the worker, which abandons the block.
#include "ttt_kernels/sim/scheduler.h"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ttt_kernels/sim/context.h"
#include "ttt_kernels/sim/racecheck.h"

// The dynamic linker's TLS accessor (x86-64 and aarch64 glibc export it): the calling thread's copy of a module's
// thread-local storage block, allocated on first use.
extern "C" void* __tls_get_addr(void* tls_index);

namespace ttt::sim::detail {
namespace {

constexpr unsigned kWarpSize = 32;
// Poisoned bytes on each side of the dynamic shared memory: catches off-by-one up to off-by-256-floats writes.
constexpr std::size_t kRedzoneBytes = 1024;
// Alignment of the dynamic shared memory (and of the arena holding it and its redzones).
constexpr std::size_t kSmemAlign = 1024;
// Fill of dynamic shared memory at block start: NaN as float, bf16 and fp16, -1 as any integer.
constexpr unsigned char kPoison = 0xff;
// Offsets of the fibers' stack tops, in cache lines (see BlockState::begin).
constexpr std::size_t kCacheLine = 64;
constexpr unsigned kStackColors = 64;
// mask value of an __activemask wait: the collective completes with whichever lanes reached it.
constexpr unsigned kOpenMask = 0;
// How far from a global buffer an access outside every buffer is reported as out of its bounds (farther ones are
// other memory: fiber stacks, the kernel's arguments, constants).
constexpr uintptr_t kGlobalGuardBytes = 64 * 1024;

enum class ThreadState : uint8_t { Runnable, AtBarrier, AtCollective, Exited };
enum class BarrierOp : uint8_t { Sync, Count, And, Or };

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;
  uint32_t group;
};

struct SimThread {
  Context ctx;
  Stack stack;
  uint3 idx{};
  unsigned linear = 0;
  ThreadState state = ThreadState::Exited;
  const char* wait_name = nullptr;  // the barrier or collective the thread waits at
  // At a barrier: the __syncthreads variant and its predicate; after the release, the variant's result.
  BarrierOp barrier_op = BarrierOp::Sync;
  int barrier_value = 0;
  // At a warp collective.
  unsigned coll_mask = 0;
  const void* coll_in = nullptr;
  void* coll_out = nullptr;
  // cp.async copies not performed yet, in issue order. Groups are numbered in commit order; `open_group` is the one
  // being filled (so groups < open_group are committed).
  std::vector<AsyncCopy> copies;
  uint32_t open_group = 0;

  SimThread() = default;
  SimThread(const SimThread&) = delete;
  SimThread& operator=(const SimThread&) = delete;
  ~SimThread() {
    if (stack.lo != nullptr) release_stack(stack);
  }
};

// A warp collective that some lanes of its mask have reached.
struct PendingCollective {
  const char* name;
  unsigned mask;
  CollectiveFn fn;
  unsigned arrived;
};

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  return buf;
}

std::string xyz(uint3 v) { return format("(%u,%u,%u)", v.x, v.y, v.z); }

// "3", "0-15", "0-3, 8, 10-11": sorted ids as ranges.
std::string ranges(const std::vector<unsigned>& ids) {
  std::string out;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out += j == i ? std::to_string(ids[i]) : format("%u-%u", ids[i], ids[j]);
    i = j + 1;
  }
  return out;
}

std::vector<unsigned> lanes_of(unsigned mask) {
  std::vector<unsigned> lanes;
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if ((mask >> lane) & 1u) lanes.push_back(lane);
  }
  return lanes;
}

// "lane 3", "lanes 0-15".
std::string lanes_phrase(unsigned mask) {
  const std::vector<unsigned> lanes = lanes_of(mask);
  return (lanes.size() == 1 ? "lane " : "lanes ") + ranges(lanes);
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The calling thread's copy of the thread-local storage block of the module (shared library) holding `code`, or
// {nullptr, 0} when it has none. Static __shared__ variables are `static thread_local` in the simulator: they live
// in the block of the kernel's module.
std::pair<unsigned char*, std::size_t> module_tls_block(const void* code) {
  struct Search {
    uintptr_t code;
    std::size_t modid = 0;
    std::size_t bytes = 0;
  } search{reinterpret_cast<uintptr_t>(code)};
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* arg) {
        auto& s = *static_cast<Search*>(arg);
        bool holds_code = false;
        std::size_t tls_bytes = 0;
        for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          if (ph.p_type == PT_LOAD && s.code >= lo && s.code < lo + ph.p_memsz) holds_code = true;
          if (ph.p_type == PT_TLS) tls_bytes = ph.p_memsz;
        }
        if (!holds_code) return 0;
        s.modid = info->dlpi_tls_modid;
        s.bytes = tls_bytes;
        return 1;
      },
      &search);
  if (search.modid == 0 || search.bytes == 0) return {nullptr, 0};
  struct {
    unsigned long module;
    unsigned long offset;
  } index{search.modid, 0};
  return {static_cast<unsigned char*>(__tls_get_addr(&index)), search.bytes};
}

bool contains(uintptr_t lo, uintptr_t hi, uintptr_t p, std::size_t n) { return p >= lo && p + n <= hi; }

thread_local BlockState* tls_block = nullptr;
thread_local SimThread* tls_thread = nullptr;

void thread_main(void* arg);

}  // namespace

// A global buffer of the launch, as an address range.
struct BufferRange {
  const GlobalBuffer* buffer;
  uintptr_t lo;
  uintptr_t hi;
};

struct BlockState {
  const KernelLaunch& launch;
  const Schedule schedule;
  const uint64_t seed;
  const bool memcheck;
  const unsigned nthreads;
  const unsigned nwarps;
  std::unique_ptr<SimThread[]> threads;
  std::vector<std::vector<PendingCollective>> pending;  // per warp
  // Run queue: a ring of runnable threads, each at most once (the running thread is not in it).
  std::vector<SimThread*> ring;
  std::size_t ring_head = 0;
  std::size_t ring_size = 0;
  std::vector<unsigned> all_ids;  // 0 .. nthreads-1, reordered by wake()
  uint64_t rng = 0;
  Context worker_ctx;
  // [redzone | smem_bytes of dynamic shared memory | redzone]
  unsigned char* arena = nullptr;
  std::size_t arena_bytes = 0;
  unsigned char* smem = nullptr;
  // Memory checks (memcheck): the shared-memory race detector with the access history of the dynamic shared memory
  // and of the static __shared__ variables (the kernel module's TLS block on this worker, which also holds the
  // runtime's own thread-locals: kernel code only reads those), and the launch's global buffers.
  RaceDetector races;
  SharedShadow dynamic_shadow;
  unsigned char* static_shared = nullptr;
  std::size_t static_shared_bytes = 0;
  SharedShadow static_shadow;
  std::vector<BufferRange> buffers;
  // The arch.h instructions this worker's blocks executed (note_instruction), recorded for the kernel at the end.
  std::vector<const char*> instructions;

  uint3 block_idx{};
  unsigned barriers_passed = 0;
  unsigned exited = 0;
  unsigned at_barrier = 0;
  unsigned at_open_collective = 0;
  bool failed = false;
  std::string error;

  BlockState(const KernelLaunch& l, const Config& config, const std::vector<GlobalBuffer>& global_buffers)
      : launch(l),
        schedule(config.schedule),
        seed(config.seed),
        memcheck(config.memcheck),
        nthreads(l.block.x * l.block.y * l.block.z),
        nwarps((nthreads + kWarpSize - 1) / kWarpSize),
        threads(std::make_unique<SimThread[]>(nthreads)),
        pending(nwarps),
        ring(nthreads),
        all_ids(nthreads),
        races(l.block),
        dynamic_shadow(memcheck ? l.smem_bytes : 0) {
    if (memcheck) {
      std::tie(static_shared, static_shared_bytes) = module_tls_block(l.kernel);
      static_shadow = SharedShadow(static_shared_bytes);
      for (const GlobalBuffer& b : global_buffers) {
        const auto lo = reinterpret_cast<uintptr_t>(b.data);
        buffers.push_back(BufferRange{&b, lo, lo + b.bytes});
      }
    }
    if (tls_block != nullptr) throw std::logic_error("CUDA simulator: one worker per OS thread");
    for (unsigned i = 0; i < nthreads; ++i) {
      SimThread& t = threads[i];
      t.stack = acquire_stack();
      t.linear = i;
      t.idx = uint3{i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y)};
    }
    arena_bytes = 2 * kRedzoneBytes + l.smem_bytes;
    arena = static_cast<unsigned char*>(::operator new(arena_bytes, std::align_val_t{kSmemAlign}));
    smem = arena + kRedzoneBytes;
    tls_block = this;
  }

  ~BlockState() {
    record_instructions(launch.kernel, instructions);
    tls_block = nullptr;
    detail::dynamic_smem = nullptr;
    ::operator delete(arena, std::align_val_t{kSmemAlign});
  }

  // ---- Messages ----

  bool multi_dim_block() const { return launch.block.y > 1 || launch.block.z > 1; }

  std::string block_prefix() const { return "block " + xyz(block_idx); }

  std::string thread_prefix(const SimThread& t) const { return block_prefix() + ", thread " + xyz(t.idx); }

  // Thread ids as ranges of linear ids (x + blockDim.x * (y + blockDim.y * z) when the block is not 1-D).
  std::string thread_ranges(const std::vector<unsigned>& ids) const {
    return (ids.size() == 1 ? "thread " : "threads ") + ranges(ids);
  }

  std::string location(const SimThread& t) const {
    switch (t.state) {
      case ThreadState::Runnable:
        return "runnable";
      case ThreadState::Exited:
        return "exited";
      case ThreadState::AtBarrier:
        return std::string("at ") + t.wait_name;
      case ThreadState::AtCollective:
        return t.coll_mask == kOpenMask ? std::string("at ") + t.wait_name
                                        : format("at %s (mask 0x%08x)", t.wait_name, t.coll_mask);
    }
    return "";
  }

  // "threads 0-39 at __syncthreads; threads 40-63 exited" for the given threads, grouped by location.
  std::string where(const std::vector<unsigned>& ids) const {
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;
    for (unsigned id : ids) {
      std::string loc = location(threads[id]);
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == loc; });
      if (it == groups.end()) {
        groups.emplace_back(std::move(loc), std::vector<unsigned>{});
        it = std::prev(groups.end());
      }
      it->second.push_back(id);
    }
    std::string out;
    for (const auto& [loc, members] : groups) {
      if (!out.empty()) out += "; ";
      out += thread_ranges(members) + " " + loc;
    }
    return out;
  }

  // Records the first error of the block.
  void set_error(std::string message) {
    if (failed) return;
    failed = true;
    error = std::move(message);
  }

  // ---- Scheduling ----

  void push(SimThread* t) {
    ring[(ring_head + ring_size) % nthreads] = t;
    ++ring_size;
  }

  SimThread* pop() {
    if (ring_size == 0) return nullptr;
    SimThread* t = ring[ring_head];
    ring_head = (ring_head + 1) % nthreads;
    --ring_size;
    return t;
  }

  // Makes the threads `ids` (ascending) runnable, queued in the order of the schedule.
  void wake(unsigned* ids, unsigned n) {
    switch (schedule) {
      case Schedule::InOrder:
        break;
      case Schedule::Reverse:
        std::reverse(ids, ids + n);
        break;
      case Schedule::Shuffle:
        for (unsigned i = n; i > 1; --i) std::swap(ids[i - 1], ids[splitmix64(rng) % i]);
        break;
    }
    for (unsigned i = 0; i < n; ++i) {
      SimThread& t = threads[ids[i]];
      t.state = ThreadState::Runnable;
      push(&t);
    }
  }

  void wake_all() {
    for (unsigned i = 0; i < nthreads; ++i) all_ids[i] = i;
    wake(all_ids.data(), nthreads);
  }

  void enter(SimThread& t) {
    tls_thread = &t;
    threadIdx = t.idx;
  }

  // Switches from `save` to the next queued thread, or to the worker when none is left.
  void switch_away(Context& save) {
    SimThread* next = pop();
    context_switch(save, next != nullptr ? next->ctx : worker_ctx);
  }

  // Blocks the running thread `t` (its state says where) until another thread or the worker wakes it.
  void suspend(SimThread& t) {
    switch_away(t.ctx);
    enter(t);
  }

  [[noreturn]] void fail(SimThread& t, const std::string& what) {
    set_error(thread_prefix(t) + ": " + what);
    context_switch(t.ctx, worker_ctx);
    std::abort();  // the worker never resumes a failed block's threads
  }

  [[noreturn]] void exit(SimThread& t) {
    if (!t.copies.empty()) {
      fail(t, format("exited with %zu cp.async cop%s never waited for: a cp.async.wait_group (after a commit) must "
                     "complete every copy before the thread exits",
                     t.copies.size(), t.copies.size() == 1 ? "y" : "ies"));
    }
    t.state = ThreadState::Exited;
    ++exited;
    Context dead;
    switch_away(dead);
    std::abort();
  }

  // ---- Block lifecycle (worker side) ----

  void begin(uint64_t block) {
    const dim3 g = launch.grid;
    block_idx = uint3{static_cast<unsigned>(block % g.x), static_cast<unsigned>((block / g.x) % g.y),
                      static_cast<unsigned>(block / (uint64_t{g.x} * g.y))};
    blockIdx = block_idx;
    blockDim = launch.block;
    gridDim = launch.grid;
    detail::dynamic_smem = smem;
    std::memset(arena, kPoison, arena_bytes);
    uint64_t mix = seed ^ (block * 0xd1b54a32d192ed03ull);
    rng = splitmix64(mix);
    barriers_passed = exited = at_barrier = at_open_collective = 0;
    races.begin_block();
    failed = false;
    error.clear();
    for (auto& list : pending) list.clear();
    ring_head = ring_size = 0;
    for (unsigned i = 0; i < nthreads; ++i) {
      SimThread& t = threads[i];
      t.copies.clear();
      t.open_group = 0;
      // Stacks are a multiple of the page size apart, so the hot top frames of all threads would share the same
      // few L1 sets; offsetting each top by a different number of cache lines spreads them over 64 sets.
      const Stack colored{t.stack.lo, t.stack.hi - (i % kStackColors) * kCacheLine};
      context_init(t.ctx, colored, &thread_main, &t);
    }
    wake_all();
  }

  // Runs queued threads until none is runnable or one fails.
  void run_until_idle() {
    SimThread* first = pop();
    if (first == nullptr) return;
    context_switch(worker_ctx, first->ctx);
    tls_thread = nullptr;
    threadIdx = uint3{};
  }

  void release_barrier() {
    unsigned count = 0;
    for (unsigned i = 0; i < nthreads; ++i) count += threads[i].barrier_value != 0;
    for (unsigned i = 0; i < nthreads; ++i) {
      SimThread& t = threads[i];
      switch (t.barrier_op) {
        case BarrierOp::Sync:
          t.barrier_value = 0;
          break;
        case BarrierOp::Count:
          t.barrier_value = static_cast<int>(count);
          break;
        case BarrierOp::And:
          t.barrier_value = count == nthreads;
          break;
        case BarrierOp::Or:
          t.barrier_value = count > 0;
          break;
      }
    }
    at_barrier = 0;
    ++barriers_passed;
    races.barrier();
    wake_all();
  }

  // Completes the collective of warp `warp` that lanes `mask` reached: runs its combine and wakes the lanes but
  // `running` (the last lane to arrive, which simply continues; nullptr when the worker completes it).
  void complete(unsigned warp, unsigned mask, CollectiveFn fn, const SimThread* running) {
    const void* ins[kWarpSize] = {};
    void* outs[kWarpSize] = {};
    unsigned ids[kWarpSize];
    unsigned n = 0;
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      if (!((mask >> lane) & 1u)) continue;
      SimThread& t = threads[warp * kWarpSize + lane];
      ins[lane] = t.coll_in;
      outs[lane] = t.coll_out;
      if (&t != running) ids[n++] = t.linear;
    }
    // The combine runs in the completing lane's name, after every lane's accesses before the collective.
    races.join(warp, mask);
    fn(ins, outs, mask);
    races.tick(warp, mask);
    wake(ids, n);
  }

  // Answers the __activemask waits: each gets the lanes of its warp waiting with it.
  void complete_open_collectives() {
    for (unsigned warp = 0; warp < nwarps; ++warp) {
      auto& list = pending[warp];
      for (auto it = list.begin(); it != list.end();) {
        if (it->mask != kOpenMask) {
          ++it;
          continue;
        }
        const PendingCollective p = *it;
        it = list.erase(it);
        at_open_collective -= static_cast<unsigned>(__builtin_popcount(p.arrived));
        complete(warp, p.arrived, p.fn, nullptr);
      }
    }
  }

  // Bytes of the dynamic shared memory's redzones that are no longer poison: an out-of-bounds write. Runs at every
  // barrier, so the common case (intact redzones) is a memcmp.
  bool check_redzones() {
    static const std::vector<unsigned char> poison(kRedzoneBytes, kPoison);
    const unsigned char* above = smem + launch.smem_bytes;
    if (std::memcmp(arena, poison.data(), kRedzoneBytes) == 0 &&
        std::memcmp(above, poison.data(), kRedzoneBytes) == 0) {
      return true;
    }
    const auto scan = [&](const unsigned char* begin, const unsigned char* end, std::string& out) {
      const unsigned char* first = std::find_if(begin, end, [](unsigned char c) { return c != kPoison; });
      if (first == end) return;
      const unsigned char* last = end - 1;
      while (*last == kPoison) --last;
      if (!out.empty()) out += " and ";
      out += format("[%td, %td)", first - smem, last + 1 - smem);
    };
    std::string bad;
    scan(arena, smem, bad);
    scan(above, above + kRedzoneBytes, bad);
    const std::string when = exited == nthreads
                                 ? std::string("when the block finished")
                                 : format("when its threads stopped at barrier #%u", barriers_passed + 1);
    set_error(block_prefix() +
              format(": dynamic shared memory written out of bounds: bytes %s (offsets from the start of the %zu-byte "
                     "dynamic shared memory) were modified; detected %s",
                     bad.c_str(), launch.smem_bytes, when.c_str()));
    return false;
  }

  // No thread can run, not all have exited, and no barrier or __activemask can be released: on hardware the block
  // would hang. Reports the collectives that cannot complete, or else the divergent barrier, and where every thread
  // is.
  void report_deadlock() {
    std::string msg;
    for (unsigned warp = 0; warp < nwarps; ++warp) {
      for (const PendingCollective& p : pending[warp]) {
        std::vector<unsigned> missing;
        for (unsigned lane : lanes_of(p.mask & ~p.arrived)) missing.push_back(warp * kWarpSize + lane);
        if (!msg.empty()) msg += "; ";
        msg += format("warp %u: %s (mask 0x%08x) cannot complete: %s reached it, %s did not (", warp, p.name, p.mask,
                      lanes_phrase(p.arrived).c_str(), lanes_phrase(p.mask & ~p.arrived).c_str());
        msg += where(missing) + ")";
      }
    }
    if (msg.empty()) {
      msg = "__syncthreads is not reached by every thread of the block (a barrier in divergent code, or threads that "
            "exited before it)";
    }
    std::vector<unsigned> everyone(nthreads);
    for (unsigned i = 0; i < nthreads; ++i) everyone[i] = i;
    std::string all = where(everyone);
    constexpr std::size_t kMaxChars = 2000;
    if (all.size() > kMaxChars) all = all.substr(0, kMaxChars) + " ...";
    set_error(block_prefix() + ": " + msg + ". Where the threads are: " + all +
              (multi_dim_block() ? " (thread ids are linear: x + blockDim.x * (y + blockDim.y * z))" : ""));
  }

  // ---- Device-side operations (on the calling thread's fiber) ----

  int barrier(SimThread& t, const char* name, BarrierOp op, int value) {
    t.wait_name = name;
    t.barrier_op = op;
    t.barrier_value = value;
    t.state = ThreadState::AtBarrier;
    ++at_barrier;
    suspend(t);
    return t.barrier_value;
  }

  void collective(SimThread& t, const char* name, unsigned mask, const void* in, void* out, CollectiveFn fn) {
    const unsigned warp = t.linear / kWarpSize;
    const unsigned lane = t.linear % kWarpSize;
    const unsigned warp_threads = std::min(kWarpSize, nthreads - warp * kWarpSize);
    const unsigned existing = warp_threads == kWarpSize ? ~0u : (1u << warp_threads) - 1u;
    if (mask != kOpenMask) {
      if (!((mask >> lane) & 1u)) {
        fail(t, format("%s: mask 0x%08x does not include the calling lane %u", name, mask, lane));
      }
      if ((mask & ~existing) != 0) {
        fail(t, format("%s: mask 0x%08x names %s, which do not exist: warp %u of this %u-thread block has %s", name,
                       mask, lanes_phrase(mask & ~existing).c_str(), warp, nthreads, lanes_phrase(existing).c_str()));
      }
    }
    t.wait_name = name;
    t.coll_mask = mask;
    t.coll_in = in;
    t.coll_out = out;
    auto& list = pending[warp];
    auto it = std::find_if(list.begin(), list.end(), [&](const PendingCollective& p) {
      return p.mask == mask && p.fn == fn && (p.name == name || std::strcmp(p.name, name) == 0);
    });
    if (it == list.end()) {
      list.push_back(PendingCollective{name, mask, fn, 0});
      it = std::prev(list.end());
    }
    it->arrived |= 1u << lane;
    if (mask == kOpenMask || it->arrived != mask) {
      t.state = ThreadState::AtCollective;
      at_open_collective += mask == kOpenMask;
      suspend(t);  // the last lane to arrive (or the worker) completes the collective and wakes this one
      return;
    }
    list.erase(it);
    complete(warp, mask, fn, &t);
  }

  void async_wait(SimThread& t, int n) {
    // Committed groups are 0 .. open_group - 1; all but the newest n complete.
    const uint32_t done = t.open_group > static_cast<uint32_t>(n) ? t.open_group - static_cast<uint32_t>(n) : 0;
    std::size_t kept = 0;
    for (const AsyncCopy& c : t.copies) {
      if (c.group < done) {
        std::memmove(c.dst, c.src, static_cast<std::size_t>(c.bytes));
        if (memcheck) {
          const auto n = static_cast<std::size_t>(c.bytes);
          const SharedLocation shared = shared_location(reinterpret_cast<uintptr_t>(c.dst), n);
          if (shared.shadow != nullptr) races.complete_async(*shared.shadow, t.linear, shared.offset, n);
        }
      } else {
        t.copies[kept++] = c;
      }
    }
    t.copies.resize(kept);
  }

  // ---- Memory checks ----

  // The shared memory holding [p, p + n): the dynamic shared memory or the static __shared__ variables, with its
  // access history and p's byte offset in it; shadow is nullptr for any other memory.
  struct SharedLocation {
    SharedShadow* shadow;
    std::size_t offset;
    const char* name;
    const unsigned char* base;
  };
  SharedLocation shared_location(uintptr_t p, std::size_t n) {
    const auto dyn = reinterpret_cast<uintptr_t>(smem);
    if (contains(dyn, dyn + launch.smem_bytes, p, n)) {
      return {&dynamic_shadow, p - dyn, "the dynamic shared memory", smem};
    }
    const auto stat = reinterpret_cast<uintptr_t>(static_shared);
    if (contains(stat, stat + static_shared_bytes, p, n)) {
      return {&static_shadow, p - stat, "the static __shared__ variables", static_shared};
    }
    return {nullptr, 0, nullptr, nullptr};
  }

  // Thread t's access to [p, p + n): shared memory in bounds and free of races, global memory inside the launch's
  // buffers. Fails the block (the calling thread) otherwise.
  void check_access(SimThread& t, uintptr_t p, std::size_t n, AccessKind kind) {
    const char* verb = kind == AccessKind::Read ? "read" : (kind == AccessKind::Atomic ? "atomic" : "write");
    if (contains(reinterpret_cast<uintptr_t>(t.stack.lo), reinterpret_cast<uintptr_t>(t.stack.hi), p, n)) return;
    const SharedLocation shared = shared_location(p, n);
    if (shared.shadow == nullptr) {
      if (overlaps_arena(p, n)) {  // in a redzone, or across an end of the dynamic shared memory
        fail(t, format("dynamic shared memory %s out of bounds: %zu-byte %s at byte offset %td of the %zu-byte "
                       "dynamic shared memory",
                       kind == AccessKind::Read ? "read" : "written", n, verb,
                       reinterpret_cast<const unsigned char*>(p) - smem, launch.smem_bytes));
      }
      check_global(t, p, n, verb);
      return;
    }
    const std::string hazard =
        races.access(*shared.shadow, t.linear, shared.offset, n, kind, shared.name, shared.base);
    if (!hazard.empty()) fail(t, hazard);
  }

  // An access outside every global buffer of the launch but within kGlobalGuardBytes of one is out of that buffer's
  // bounds, unless it is memory kernels legitimately read there: another thread's stack (a warp collective's
  // operands) or the kernel's arguments.
  // `access`: "read", "write" or the instruction, for the message.
  void check_global(SimThread& t, uintptr_t p, std::size_t n, const char* access) {
    const BufferRange* nearest = nullptr;
    uintptr_t nearest_gap = 0;
    for (const BufferRange& b : buffers) {
      if (contains(b.lo, b.hi, p, n)) return;
      const uintptr_t gap = p + n <= b.lo ? b.lo - (p + n) : (p >= b.hi ? p - b.hi : 0);
      if (gap < kGlobalGuardBytes && (nearest == nullptr || gap < nearest_gap)) {
        nearest = &b;
        nearest_gap = gap;
      }
    }
    if (nearest == nullptr) return;
    const auto ctx = reinterpret_cast<uintptr_t>(launch.ctx);
    if (contains(ctx, ctx + launch.ctx_bytes, p, n)) return;
    for (unsigned i = 0; i < nthreads; ++i) {
      const Stack& st = threads[i].stack;
      if (contains(reinterpret_cast<uintptr_t>(st.lo), reinterpret_cast<uintptr_t>(st.hi), p, n)) return;
    }
    const GlobalBuffer& b = *nearest->buffer;
    std::string where;
    if (p < nearest->lo) {
      where = format("starts %zu bytes before", static_cast<std::size_t>(nearest->lo - p));
    } else if (p >= nearest->hi) {
      where = format("starts %zu bytes past the end of", static_cast<std::size_t>(p - nearest->hi));
    } else {
      where = format("runs %zu bytes past the end of", static_cast<std::size_t>(p + n - nearest->hi));
    }
    fail(t, format("global memory out of bounds: the %zu-byte %s at %p %s tensor '%s' ([%p, %p), %zu bytes)", n,
                   access, reinterpret_cast<const void*>(p), where.c_str(), b.name.c_str(), b.data,
                   reinterpret_cast<const void*>(nearest->hi), b.bytes));
  }

  // Whether [p, p + bytes) touches the dynamic shared memory or its redzones.
  bool overlaps_arena(uintptr_t p, std::size_t bytes) const {
    const auto lo = reinterpret_cast<uintptr_t>(arena);
    return p < lo + arena_bytes && p + bytes > lo;
  }
};

namespace {

void thread_main(void* arg) {
  SimThread& t = *static_cast<SimThread*>(arg);
  BlockState& b = *tls_block;
  b.enter(t);
  // Exceptions are caught here, on the fiber's own stack, and turned into a launch failure outside the handler.
  std::string thrown;
  try {
    b.launch.body(b.launch.ctx);
  } catch (const std::exception& e) {
    thrown = std::string("the kernel threw: ") + e.what();
  } catch (...) {
    thrown = "the kernel threw an exception not derived from std::exception";
  }
  if (!thrown.empty()) b.fail(t, thrown);
  b.exit(t);
}

std::pair<BlockState&, SimThread&> current(const char* what) {
  if (tls_thread == nullptr) {
    throw std::logic_error(std::string(what) + " called outside a kernel running in the CUDA simulator");
  }
  return {*tls_block, *tls_thread};
}

unsigned combine_reduce(ReduceOp op, unsigned a, unsigned b) {
  switch (op) {
    case ReduceOp::Add:
      return a + b;
    case ReduceOp::Min:
      return std::min(a, b);
    case ReduceOp::Max:
      return std::max(a, b);
    case ReduceOp::And:
      return a & b;
    case ReduceOp::Or:
    case ReduceOp::Ballot:
      return a | b;
    case ReduceOp::Xor:
      return a ^ b;
  }
  return 0;
}

struct ReduceOperand {
  ReduceOp op;
  unsigned value;
};

// Reduces the lanes' values (ballot: their predicate bits) and gives every lane the result. Signed min/max
// compare with the sign bit flipped, which orders two's-complement values as unsigned.
template <bool kSigned>
void reduce_combine(const void* const* ins, void* const* outs, unsigned mask) {
  const unsigned flip = kSigned ? 0x80000000u : 0u;
  bool first = true;
  unsigned acc = 0;
  ReduceOp op = ReduceOp::Add;
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if (!((mask >> lane) & 1u)) continue;
    const auto& in = *static_cast<const ReduceOperand*>(ins[lane]);
    op = in.op;
    unsigned v = in.value;
    if (op == ReduceOp::Ballot) {
      v = v != 0 ? 1u << lane : 0u;
    } else if (op == ReduceOp::Min || op == ReduceOp::Max) {
      v ^= flip;
    }
    acc = first ? v : combine_reduce(op, acc, v);
    first = false;
  }
  if (op == ReduceOp::Min || op == ReduceOp::Max) acc ^= flip;
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if ((mask >> lane) & 1u) *static_cast<unsigned*>(outs[lane]) = acc;
  }
}

void activemask_combine(const void* const* /*ins*/, void* const* outs, unsigned mask) {
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if ((mask >> lane) & 1u) *static_cast<unsigned*>(outs[lane]) = mask;
  }
}

void syncwarp_combine(const void* const*, void* const*, unsigned) {}

}  // namespace

// ---- Worker --------------------------------------------------------------------------------------------------------

Worker::Worker(const KernelLaunch& launch, const Config& config, const std::vector<GlobalBuffer>& buffers)
    : state_(std::make_unique<BlockState>(launch, config, buffers)) {}

Worker::~Worker() = default;

std::string Worker::run_block(uint64_t block) {
  BlockState& b = *state_;
  b.begin(block);
  for (;;) {
    b.run_until_idle();
    if (b.failed || !b.check_redzones() || b.exited == b.nthreads) break;
    if (b.at_open_collective > 0) {
      b.complete_open_collectives();
    } else if (b.at_barrier == b.nthreads) {
      b.release_barrier();
    } else {
      b.report_deadlock();
      break;
    }
  }
  return b.failed ? b.error : std::string();
}

bool in_simulated_thread() { return tls_thread != nullptr; }

namespace {
// An access of kernel code, checked when it runs as a simulated thread of a block with memcheck on.
void check_kernel_access(uintptr_t address, std::size_t bytes, AccessKind kind) {
  SimThread* t = tls_thread;
  if (t != nullptr && tls_block->memcheck) tls_block->check_access(*t, address, bytes, kind);
}
}  // namespace

void memory_access(uintptr_t address, std::size_t bytes, bool write) {
  check_kernel_access(address, bytes, write ? AccessKind::Write : AccessKind::Read);
}

void atomic_access(const void* address, std::size_t bytes) {
  check_kernel_access(reinterpret_cast<uintptr_t>(address), bytes, AccessKind::Atomic);
}

unsigned warp_reduce_u32(const char* name, ReduceOp op, unsigned mask, unsigned value) {
  auto [b, t] = current(name);
  const ReduceOperand in{op, value};
  unsigned out = 0;
  b.collective(t, name, mask, &in, &out, &reduce_combine<false>);
  return out;
}

int warp_reduce_i32(const char* name, ReduceOp op, unsigned mask, int value) {
  auto [b, t] = current(name);
  const ReduceOperand in{op, static_cast<unsigned>(value)};
  unsigned out = 0;
  b.collective(t, name, mask, &in, &out, &reduce_combine<true>);
  return static_cast<int>(out);
}

void fail_shfl_width(const char* name, int width) {
  fail(std::string(name) + ": width " + std::to_string(width) + " is not a power of 2 in [1, 32]");
}

}  // namespace ttt::sim::detail

// ---- Public runtime interface ------------------------------------------------------------------------------------

namespace ttt::sim {

using detail::current;

void warp_collective(const char* name, unsigned mask, const void* in, void* out, CollectiveFn combine) {
  auto [b, t] = current(name);
  b.collective(t, name, mask, in, out, combine);
}

void async_copy_enqueue(void* dst, const void* src, int bytes) {
  auto [b, t] = current("cp.async");
  if (bytes <= 0) b.fail(t, "cp.async: copy of " + std::to_string(bytes) + " bytes");
  // The destination counts as written from now until the wait. (arch.h's cp.async has checked the source, with
  // check_global_access, under the instruction's name.)
  if (b.memcheck) {
    const auto n = static_cast<std::size_t>(bytes);
    b.check_access(t, reinterpret_cast<uintptr_t>(dst), n, detail::AccessKind::AsyncWrite);
  }
  t.copies.push_back(detail::AsyncCopy{dst, src, bytes, t.open_group});
}

void async_copy_commit() {
  auto [b, t] = current("cp.async.commit_group");
  (void)b;
  ++t.open_group;
}

void async_copy_wait(int n) {
  auto [b, t] = current("cp.async.wait_group");
  if (n < 0) b.fail(t, "cp.async.wait_group " + std::to_string(n) + ": the group count must be >= 0");
  b.async_wait(t, n);
}

void note_instruction(const char* ptx) {
  auto [b, t] = current(ptx);
  (void)t;
  // The same literal from the same inline function is the same pointer: the common case is the pointer compare.
  for (const char* seen : b.instructions) {
    if (seen == ptx || std::strcmp(seen, ptx) == 0) return;
  }
  b.instructions.push_back(ptx);
}

void fail(const std::string& what) {
  auto [b, t] = current("ttt::sim::fail");
  b.fail(t, what);
}

void check_shared_access(const char* what, const void* ptr, int bytes, int align) {
  auto [b, t] = current(what);
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  if (align > 0 && p % static_cast<unsigned>(align) != 0) {
    b.fail(t, detail::format("%s: shared-memory address %p is not %d-byte aligned", what, ptr, align));
  }
  const auto n = static_cast<std::size_t>(bytes);
  if (b.overlaps_arena(p, n)) {
    const std::ptrdiff_t offset = static_cast<const unsigned char*>(ptr) - b.smem;
    if (offset < 0 || static_cast<std::size_t>(offset) + n > b.launch.smem_bytes) {
      b.fail(t, detail::format("%s: %d-byte access at byte offset %td of the %zu-byte dynamic shared memory is out "
                               "of bounds",
                               what, bytes, offset, b.launch.smem_bytes));
    }
  }
}

void check_global_access(const char* what, const void* ptr, int bytes, int align) {
  auto [b, t] = current(what);
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  if (ptr == nullptr) b.fail(t, std::string(what) + ": null global-memory address");
  if (align > 0 && p % static_cast<unsigned>(align) != 0) {
    b.fail(t, detail::format("%s: global-memory address %p is not %d-byte aligned", what, ptr, align));
  }
  if (b.overlaps_arena(p, static_cast<std::size_t>(bytes))) {
    b.fail(t, detail::format("%s: address %p is in shared memory (byte offset %td of the dynamic shared memory), "
                             "expected global memory",
                             what, ptr, static_cast<const unsigned char*>(ptr) - b.smem));
  }
  if (b.memcheck) b.check_global(t, p, static_cast<std::size_t>(bytes), what);
}

}  // namespace ttt::sim

// ---- CUDA intrinsics -----------------------------------------------------------------------------------------------

void __syncthreads() {
  auto [b, t] = ttt::sim::detail::current("__syncthreads");
  b.barrier(t, "__syncthreads", ttt::sim::detail::BarrierOp::Sync, 0);
}

int __syncthreads_count(int predicate) {
  auto [b, t] = ttt::sim::detail::current("__syncthreads_count");
  return b.barrier(t, "__syncthreads_count", ttt::sim::detail::BarrierOp::Count, predicate != 0);
}

int __syncthreads_and(int predicate) {
  auto [b, t] = ttt::sim::detail::current("__syncthreads_and");
  return b.barrier(t, "__syncthreads_and", ttt::sim::detail::BarrierOp::And, predicate != 0);
}

int __syncthreads_or(int predicate) {
  auto [b, t] = ttt::sim::detail::current("__syncthreads_or");
  return b.barrier(t, "__syncthreads_or", ttt::sim::detail::BarrierOp::Or, predicate != 0);
}

void __syncwarp(unsigned mask) {
  ttt::sim::warp_collective("__syncwarp", mask, nullptr, nullptr, &ttt::sim::detail::syncwarp_combine);
}

unsigned __activemask() {
  auto [b, t] = ttt::sim::detail::current("__activemask");
  unsigned out = 0;
  b.collective(t, "__activemask", ttt::sim::detail::kOpenMask, nullptr, &out, &ttt::sim::detail::activemask_combine);
  return out;
}

void __trap() { ttt::sim::fail("__trap() called"); }
