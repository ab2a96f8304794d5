// The entry points of the compiler's memory-access instrumentation, as the simulator's kernel objects call them.
//
// CMakeLists.txt compiles every simulated .cu with GCC's / Clang's kernel-address instrumentation in outline mode
// (-fsanitize=kernel-address with a call threshold of 0, no stack or global redzones): the compiler then emits a
// call to __asan_{load,store}{1,2,4,8,16,N}_noabort(address[, size]) before each load and store of kernel code and
// nothing else (no shadow memory, no runtime library). These definitions forward them to the simulator
// (ttt::sim::detail::memory_access), which checks them against the running block. They are hidden, and this file is
// compiled (without instrumentation) into every library holding simulated kernels, so each library's kernels reach
// the simulator's checks even in a process that also loads a sanitizer runtime.
#include <cstddef>
#include <cstdint>

#include "ttt_kernels/sim/runtime.h"

#define TTT_SIM_ACCESS_HOOKS(n)                                                                             \
  extern "C" __attribute__((visibility("hidden"))) void __asan_load##n##_noabort(uintptr_t address) {      \
    ttt::sim::detail::memory_access(address, n, false);                                                     \
  }                                                                                                         \
  extern "C" __attribute__((visibility("hidden"))) void __asan_store##n##_noabort(uintptr_t address) {     \
    ttt::sim::detail::memory_access(address, n, true);                                                      \
  }
TTT_SIM_ACCESS_HOOKS(1)
TTT_SIM_ACCESS_HOOKS(2)
TTT_SIM_ACCESS_HOOKS(4)
TTT_SIM_ACCESS_HOOKS(8)
TTT_SIM_ACCESS_HOOKS(16)
#undef TTT_SIM_ACCESS_HOOKS

extern "C" __attribute__((visibility("hidden"))) void __asan_loadN_noabort(uintptr_t address, std::size_t bytes) {
  ttt::sim::detail::memory_access(address, bytes, false);
}
extern "C" __attribute__((visibility("hidden"))) void __asan_storeN_noabort(uintptr_t address, std::size_t bytes) {
  ttt::sim::detail::memory_access(address, bytes, true);
}

// Called before a call that does not return (a throw, __trap): a sanitizer runtime would unpoison the abandoned
// stack frames; the simulator keeps no stack state, so nothing is done.
extern "C" __attribute__((visibility("hidden"))) void __asan_handle_no_return() {}

// Bracket the dynamic initialization of a translation unit's globals (CUTLASS's headers define some): a sanitizer
// runtime checks initialization order there; the simulator checks accesses of kernel code only, so nothing is done.
extern "C" __attribute__((visibility("hidden"))) void __asan_before_dynamic_init(const char* /*module_name*/) {}
extern "C" __attribute__((visibility("hidden"))) void __asan_after_dynamic_init() {}
