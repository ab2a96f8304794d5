// Fiber contexts and stacks of the CUDA simulator (include/ttt_kernels/sim/context.h).
#include "ttt_kernels/sim/context.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if !defined(TTT_SIM_UCONTEXT) && defined(__x86_64__)
// System V x86-64. Callee-saved: rbx, rbp, r12-r15 (and the MXCSR / x87 control words, shared by all fibers of a
// thread, see context.h). The caller's return address is already on its stack, so a switch is: push the six
// registers, swap stack pointers, pop the other fiber's six registers, return into it.
// A new fiber's stack holds a frame whose r12 / r13 slots carry arg / entry and whose return address is
// ttt_sim_context_start, which calls entry(arg) on a 16-byte aligned stack. Its CFI marks the end of the call chain
// for debuggers and unwinders.
asm(R"(
  .text
  .globl ttt_sim_context_swap
  .hidden ttt_sim_context_swap
  .type ttt_sim_context_swap, @function
  .p2align 4
ttt_sim_context_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ttt_sim_context_swap, .-ttt_sim_context_swap

  .globl ttt_sim_context_start
  .hidden ttt_sim_context_start
  .type ttt_sim_context_start, @function
  .p2align 4
ttt_sim_context_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size ttt_sim_context_start, .-ttt_sim_context_start
)");
#elif !defined(TTT_SIM_UCONTEXT) && defined(__aarch64__)
// AAPCS64. Callee-saved: x19-x28, the frame pointer x29, the link register x30 and d8-d15 (FPCR is shared, see
// context.h). The switch stores them in a 160-byte frame on the running stack, swaps stack pointers, loads the
// other fiber's frame and returns through its x30. A new fiber's frame carries arg / entry in x19 / x20 and
// ttt_sim_context_start in x30.
asm(R"(
  .text
  .globl ttt_sim_context_swap
  .hidden ttt_sim_context_swap
  .type ttt_sim_context_swap, %function
  .p2align 4
ttt_sim_context_swap:
  sub sp, sp, #160
  stp x19, x20, [sp, #0]
  stp x21, x22, [sp, #16]
  stp x23, x24, [sp, #32]
  stp x25, x26, [sp, #48]
  stp x27, x28, [sp, #64]
  stp x29, x30, [sp, #80]
  stp d8, d9, [sp, #96]
  stp d10, d11, [sp, #112]
  stp d12, d13, [sp, #128]
  stp d14, d15, [sp, #144]
  mov x9, sp
  str x9, [x0]
  mov sp, x1
  ldp x19, x20, [sp, #0]
  ldp x21, x22, [sp, #16]
  ldp x23, x24, [sp, #32]
  ldp x25, x26, [sp, #48]
  ldp x27, x28, [sp, #64]
  ldp x29, x30, [sp, #80]
  ldp d8, d9, [sp, #96]
  ldp d10, d11, [sp, #112]
  ldp d12, d13, [sp, #128]
  ldp d14, d15, [sp, #144]
  add sp, sp, #160
  ret
  .size ttt_sim_context_swap, .-ttt_sim_context_swap

  .globl ttt_sim_context_start
  .hidden ttt_sim_context_start
  .type ttt_sim_context_start, %function
  .p2align 4
ttt_sim_context_start:
  .cfi_startproc
  .cfi_undefined x30
  mov x0, x19
  blr x20
  brk #0
  .cfi_endproc
  .size ttt_sim_context_start, .-ttt_sim_context_start
)");
#endif

#if !defined(TTT_SIM_UCONTEXT)
extern "C" void ttt_sim_context_start() __attribute__((visibility("hidden")));
#endif

namespace ttt::sim::detail {
namespace {

std::size_t page_bytes() {
  static const std::size_t bytes = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return bytes;
}

std::mutex pool_mutex;
std::vector<Stack> pool;  // free stacks, all of stack_bytes()

#if defined(TTT_SIM_UCONTEXT)
// makecontext passes int arguments only: entry and arg travel as 32-bit halves.
void ucontext_start(unsigned entry_hi, unsigned entry_lo, unsigned arg_hi, unsigned arg_lo) {
  const auto join = [](unsigned hi, unsigned lo) { return (uint64_t{hi} << 32) | lo; };
  const auto entry = reinterpret_cast<EntryFn>(static_cast<uintptr_t>(join(entry_hi, entry_lo)));
  entry(reinterpret_cast<void*>(static_cast<uintptr_t>(join(arg_hi, arg_lo))));
  std::abort();  // entry never returns
}
#endif

}  // namespace

std::size_t stack_bytes() {
  static const std::size_t bytes = [] {
    constexpr std::size_t kDefaultKiB = 128;
    constexpr std::size_t kMinKiB = 16;
    constexpr std::size_t kMaxKiB = 1 << 20;
    std::size_t kib = kDefaultKiB;
    if (const char* env = std::getenv("TTT_SIM_STACK_KIB"); env != nullptr && *env != '\0') {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(env, &end, 10);
      if (*end != '\0' || v < kMinKiB || v > kMaxKiB) {
        throw std::runtime_error("TTT_SIM_STACK_KIB=\"" + std::string(env) + "\": expected the fiber stack size in " +
                                 "KiB, " + std::to_string(kMinKiB) + " to " + std::to_string(kMaxKiB));
      }
      kib = static_cast<std::size_t>(v);
    }
    const std::size_t page = page_bytes();
    return (kib * 1024 + page - 1) / page * page;
  }();
  return bytes;
}

Stack acquire_stack() {
  const std::size_t bytes = stack_bytes();
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (!pool.empty()) {
      const Stack s = pool.back();
      pool.pop_back();
      return s;
    }
  }
  const std::size_t page = page_bytes();
  void* map = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (map == MAP_FAILED) {
    throw std::runtime_error("CUDA simulator: cannot map a " + std::to_string(bytes / 1024) +
                             " KiB fiber stack: " + std::strerror(errno) +
                             " (lower TTT_SIM_STACK_KIB or the number of simulator workers)");
  }
  auto* base = static_cast<unsigned char*>(map);
  // The guard page is best effort: mprotect fails once the process reaches its limit of memory mappings, and the
  // stack works without it.
  (void)mprotect(base, page, PROT_NONE);
  return Stack{base + page, base + page + bytes};
}

void release_stack(const Stack& stack) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  pool.push_back(stack);
}

void context_init(Context& ctx, const Stack& stack, EntryFn entry, void* arg) {
#if defined(TTT_SIM_UCONTEXT)
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.lo;
  ctx.uc.uc_stack.ss_size = static_cast<std::size_t>(stack.hi - stack.lo);
  ctx.uc.uc_link = nullptr;
  const auto e = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(entry));
  const auto a = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(arg));
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&ucontext_start), 4, static_cast<unsigned>(e >> 32),
              static_cast<unsigned>(e), static_cast<unsigned>(a >> 32), static_cast<unsigned>(a));
#else
  const uintptr_t top = reinterpret_cast<uintptr_t>(stack.hi) & ~uintptr_t{15};
#if defined(__x86_64__)
  // Popped by ttt_sim_context_swap: r15, r14, r13 = entry, r12 = arg, rbx, rbp, then the return address. After the
  // return the stack pointer is top - 16, 16-byte aligned as the call in ttt_sim_context_start requires.
  void** frame = reinterpret_cast<void**>(top - 72);
  for (int i = 0; i < 6; ++i) frame[i] = nullptr;
  frame[2] = reinterpret_cast<void*>(entry);
  frame[3] = arg;
  frame[6] = reinterpret_cast<void*>(&ttt_sim_context_start);
#else
  // Loaded by ttt_sim_context_swap: x19 = arg, x20 = entry, x21-x28, x29 = 0, x30 = start, d8-d15; then sp = top.
  void** frame = reinterpret_cast<void**>(top - 160);
  for (int i = 0; i < 20; ++i) frame[i] = nullptr;
  frame[0] = arg;
  frame[1] = reinterpret_cast<void*>(entry);
  frame[11] = reinterpret_cast<void*>(&ttt_sim_context_start);
#endif
  ctx.sp = frame;
#endif
}

}  // namespace ttt::sim::detail
