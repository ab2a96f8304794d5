// Simulator internals: fiber stacks and execution contexts (csrc/sim/context.cpp).
//
// A context switch saves the callee-saved registers and the stack pointer of the running fiber and loads another's:
// hand-written assembly on x86-64 (System V) and aarch64 (AAPCS64), ucontext elsewhere. Fibers of one block run on
// one OS thread and share its floating-point environment (MXCSR / FPCR are not switched: kernels do not change them).
#pragma once

#include <cstddef>

#if !defined(TTT_SIM_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define TTT_SIM_UCONTEXT 1  // may also be defined on the command line, to test this path on x86-64
#endif
#if defined(TTT_SIM_UCONTEXT)
#include <ucontext.h>
#endif

namespace ttt::sim::detail {

// A fiber stack, usable in [lo, hi). A PROT_NONE guard page lies below lo when the kernel granted one, so a stack
// overflow faults at once instead of overwriting the neighbouring stack.
struct Stack {
  unsigned char* lo = nullptr;
  unsigned char* hi = nullptr;
};

// Size of a fiber stack: TTT_SIM_STACK_KIB (KiB) from the environment, read once; default 128 KiB. Simulated threads
// run ordinary host code: an -O0 build of a kernel with register fragments, or a printf of a double, takes tens of
// KiB, so 64 KiB is the least that is safe. Only the pages a thread touches become resident, so a generous size
// costs address space, not memory.
std::size_t stack_bytes();
// Stacks come from a process-wide pool and go back to it, so launches reuse them. Throws std::runtime_error when no
// memory can be mapped.
Stack acquire_stack();
void release_stack(const Stack& stack);

using EntryFn = void (*)(void* arg);

struct Context {
#if defined(TTT_SIM_UCONTEXT)
  ucontext_t uc;
#else
  void* sp = nullptr;  // saved stack pointer; the registers are on that stack
#endif
};

// Prepares `ctx` so that switching to it runs entry(arg) on `stack`. entry must never return: it ends by switching
// away for good.
void context_init(Context& ctx, const Stack& stack, EntryFn entry, void* arg);

}  // namespace ttt::sim::detail

#if !defined(TTT_SIM_UCONTEXT)
// Saves the running fiber's callee-saved registers on its stack and its stack pointer in *save_sp, then resumes the
// fiber whose stack pointer is `resume_sp`.
extern "C" void ttt_sim_context_swap(void** save_sp, void* resume_sp) __attribute__((visibility("hidden")));
#endif

namespace ttt::sim::detail {

// Saves the running context in `from` and resumes `to`.
inline void context_switch(Context& from, const Context& to) {
#if defined(TTT_SIM_UCONTEXT)
  swapcontext(&from.uc, &to.uc);
#else
  ttt_sim_context_swap(&from.sp, to.sp);
#endif
}

}  // namespace ttt::sim::detail
