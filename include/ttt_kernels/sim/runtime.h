// The CUDA language for host compilers: what a .cu kernel uses, implemented on top of the simulator runtime
// (csrc/sim/). Kernels include ttt_kernels/device/runtime.h, which includes this file when TTT_SIM is defined.
// docs/simulator.md describes the execution model; in short:
//
// - every CUDA thread of a block is a fiber; a block runs on one OS thread, blocks are spread over worker threads;
// - a thread runs until it blocks at __syncthreads, __syncwarp or a warp collective (shuffle, vote, mma, ...);
//   between those points the order of threads follows ttt::sim::config().schedule;
// - barriers and collectives that cannot complete (divergence, missing lanes), dynamic shared memory written out of
//   bounds and cp.async copies never waited for make the launch fail with a message naming block and threads;
// - `__shared__` is `static thread_local`: each OS thread has its own copy, which its blocks reuse. Static shared
//   arrays are neither poisoned nor bounds-checked; put tiles in dynamic shared memory (ttt::dynamic_smem<T>()),
//   which is poisoned with 0xFF bytes (NaN for float/bf16/fp16) at block start and guarded by redzones.
#pragma once

#include <math.h>

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "ttt_kernels/sim/fp16.h"
#include "ttt_kernels/sim/vector_types.h"

// ---- Qualifiers -----------------------------------------------------------------------------------------------------
// __noinline__ and __restrict__ are left alone: libstdc++ uses __attribute__((__noinline__)), and __restrict__ is a
// GCC keyword already.

#define __global__
#define __device__
#define __host__
#define __constant__
#define __grid_constant__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- Built-in variables ---------------------------------------------------------------------------------------------
// Per OS thread; the runtime sets threadIdx whenever it resumes a simulated thread and the others at block start.

inline thread_local uint3 threadIdx{};
inline thread_local uint3 blockIdx{};
inline thread_local dim3 blockDim{};
inline thread_local dim3 gridDim{};
inline constexpr int warpSize = 32;

// ---- Runtime interface --------------------------------------------------------------------------------------------

namespace ttt::sim {

// Generic warp collective, the mechanism behind shuffles, votes, __syncwarp and the tensor-core primitives of
// device/arch.h. Every lane of `mask` in the calling thread's warp calls it with the same `name` and `combine`, each
// passing pointers to its own input and output. The call blocks until all lanes of `mask` have arrived; then the
// last lane to arrive runs combine(ins, outs, mask) once, ins[lane] / outs[lane] being each lane's pointers (nullptr
// for lanes outside mask), and every lane continues. Lanes of `mask` that exit or wait elsewhere (a barrier, a
// collective with another name or mask) make the launch fail with a message naming block, warp, lanes and
// collectives. `combine` must not block (call barriers or collectives); it may call fail().
using CollectiveFn = void (*)(const void* const* ins, void* const* outs, unsigned mask);
void warp_collective(const char* name, unsigned mask, const void* in, void* out, CollectiveFn combine);

// Per-thread cp.async queue. enqueue defers a copy of `bytes` bytes until a wait releases it; commit closes the
// current group; wait(n) performs the copies of all committed groups but the newest n. Copies never waited for when
// the thread exits fail the launch; at __syncthreads they simply stay pending, as on hardware.
void async_copy_enqueue(void* dst, const void* src, int bytes);
void async_copy_commit();
void async_copy_wait(int n);

// Notes that the calling thread's kernel executes the PTX instruction `ptx` (a string literal of device/arch.h): the
// simulator keeps, per kernel, the set of such instructions executed (ttt::sim::executed_instructions), which the
// tests compare with the instructions in the kernel's SASS.
void note_instruction(const char* ptx);

// Fails the launch from device code: the message gets the block and thread ids prepended, the block is abandoned
// (no destructors run on the simulated threads' stacks) and ttt::launch throws once all workers have stopped.
[[noreturn]] void fail(const std::string& what);

// Address checks for instructions that name a state space (`what` is the instruction, for the message).
// Shared: `ptr` aligned to `align` bytes and, when it points into the block's dynamic shared memory or its redzones,
// [ptr, ptr + bytes) inside the dynamic shared memory. Static __shared__ arrays cannot be told from other host
// memory and get the alignment check only.
void check_shared_access(const char* what, const void* ptr, int bytes, int align);
// Global: `ptr` non-null, aligned to `align` bytes and not into the block's dynamic shared memory.
void check_global_access(const char* what, const void* ptr, int bytes, int align);

namespace detail {

// The block's dynamic shared memory (set at block start).
inline thread_local unsigned char* dynamic_smem = nullptr;

// One kernel launch, type-erased by ttt::launch: body(ctx) runs the kernel for the calling simulated thread.
struct KernelLaunch {
  const void* kernel;  // the __global__ function, for its name in messages
  dim3 grid;
  dim3 block;
  std::size_t smem_bytes;
  void (*body)(const void* ctx);
  const void* ctx;
  std::size_t ctx_bytes;  // the kernel's arguments live in [ctx, ctx + ctx_bytes): memory the kernel may read
};

// Every load and store of kernel code: the compiler instruments the simulator's kernel objects (CMakeLists.txt) so
// that each access of `bytes` bytes at `address` lands here (csrc/sim/access_hooks.cpp) and is checked against the
// running block's shared memory (bounds, races) and the launch's global buffers. Outside a simulated thread it
// returns at once.
void memory_access(uintptr_t address, std::size_t bytes, bool write);
// An atomic read-modify-write of `bytes` bytes at `address` (the atomics below, which are not instrumented
// themselves): checked like a write, except that atomics of different threads never race with each other.
void atomic_access(const void* address, std::size_t bytes);

// Validates the launch like the CUDA runtime, runs every block, and throws std::runtime_error naming the kernel and
// the launch shape on an invalid launch or a kernel error. Returns when the grid has completed.
void launch(const KernelLaunch& launch);

// Shuffle modes of shfl.sync and the operands CUDA's __shfl*_sync pass to it.
enum class ShflMode { Idx, Up, Down, Bfly };

template <class T>
struct ShflOperand {
  T value;
  unsigned b;  // source lane (idx), lane offset (up/down) or lane mask (bfly)
  unsigned c;  // (32 - width) << 8 | clamp, clamp = 0 for up and 31 otherwise
};

// Source lane of `lane` as the PTX ISA defines shfl.sync, or `lane` itself when the computed lane is out of range.
inline unsigned shfl_source_lane(ShflMode mode, unsigned lane, unsigned b, unsigned c) {
  const unsigned bval = b & 31u;
  const unsigned cval = c & 31u;
  const unsigned segmask = (c >> 8) & 31u;
  const int max_lane = static_cast<int>((lane & segmask) | (cval & ~segmask));
  const int min_lane = static_cast<int>(lane & segmask);
  int j = 0;
  bool in_range = false;
  switch (mode) {
    case ShflMode::Up:
      j = static_cast<int>(lane) - static_cast<int>(bval);
      in_range = j >= max_lane;
      break;
    case ShflMode::Down:
      j = static_cast<int>(lane + bval);
      in_range = j <= max_lane;
      break;
    case ShflMode::Bfly:
      j = static_cast<int>(lane ^ bval);
      in_range = j <= max_lane;
      break;
    case ShflMode::Idx:
      j = min_lane | static_cast<int>(bval & ~segmask);
      in_range = j <= max_lane;
      break;
  }
  return in_range ? static_cast<unsigned>(j) : lane;
}

// Every lane of `mask` reads its source lane's value. A source lane outside `mask` is undefined on hardware; here
// it yields all-one bytes (NaN for floating-point types).
template <class T, ShflMode kMode>
void shfl_combine(const void* const* ins, void* const* outs, unsigned mask) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!((mask >> lane) & 1u)) continue;
    const auto& self = *static_cast<const ShflOperand<T>*>(ins[lane]);
    const unsigned src = shfl_source_lane(kMode, lane, self.b, self.c);
    if ((mask >> src) & 1u) {
      std::memcpy(outs[lane], &static_cast<const ShflOperand<T>*>(ins[src])->value, sizeof(T));
    } else {
      std::memset(outs[lane], 0xff, sizeof(T));
    }
  }
}

[[noreturn]] void fail_shfl_width(const char* name, int width);

template <class T, ShflMode kMode>
T shfl(const char* name, unsigned mask, T var, unsigned b, int width) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffles move trivially copyable values");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail_shfl_width(name, width);
  const unsigned clamp = kMode == ShflMode::Up ? 0u : 31u;
  const ShflOperand<T> in{var, b, (static_cast<unsigned>(32 - width) << 8) | clamp};
  T out;
  warp_collective(name, mask, &in, &out, &shfl_combine<T, kMode>);
  return out;
}

// Lane-wise reduction over `mask` of a 32-bit value, for the votes and __reduce_*_sync.
enum class ReduceOp { Add, Min, Max, And, Or, Xor, Ballot };
unsigned warp_reduce_u32(const char* name, ReduceOp op, unsigned mask, unsigned value);
int warp_reduce_i32(const char* name, ReduceOp op, unsigned mask, int value);

}  // namespace detail
}  // namespace ttt::sim

// ---- Synchronization ------------------------------------------------------------------------------------------------

void __syncthreads();
int __syncthreads_count(int predicate);
int __syncthreads_and(int predicate);
int __syncthreads_or(int predicate);
void __syncwarp(unsigned mask = 0xffffffffu);
// The lanes of the calling warp that reach an __activemask() before the block runs out of runnable threads (the
// others having exited or blocked elsewhere): the converged lanes, in the simulator's terms.
unsigned __activemask();
[[noreturn]] void __trap();

inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- Warp shuffles, votes and reductions -------------------------------------------------------------------------

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ttt::sim::detail::shfl<T, ttt::sim::detail::ShflMode::Idx>("__shfl_sync", mask, var,
                                                                     static_cast<unsigned>(src_lane), width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ttt::sim::detail::shfl<T, ttt::sim::detail::ShflMode::Up>("__shfl_up_sync", mask, var, delta, width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ttt::sim::detail::shfl<T, ttt::sim::detail::ShflMode::Down>("__shfl_down_sync", mask, var, delta, width);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ttt::sim::detail::shfl<T, ttt::sim::detail::ShflMode::Bfly>("__shfl_xor_sync", mask, var,
                                                                      static_cast<unsigned>(lane_mask), width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  using ttt::sim::detail::ReduceOp;
  return ttt::sim::detail::warp_reduce_u32("__ballot_sync", ReduceOp::Ballot, mask, predicate != 0);
}
inline int __all_sync(unsigned mask, int predicate) {
  using ttt::sim::detail::ReduceOp;
  return static_cast<int>(ttt::sim::detail::warp_reduce_u32("__all_sync", ReduceOp::And, mask, predicate != 0));
}
inline int __any_sync(unsigned mask, int predicate) {
  using ttt::sim::detail::ReduceOp;
  return static_cast<int>(ttt::sim::detail::warp_reduce_u32("__any_sync", ReduceOp::Or, mask, predicate != 0));
}

#define TTT_SIM_WARP_REDUCE(name, op)                                                                      \
  inline unsigned name(unsigned mask, unsigned value) {                                                    \
    return ttt::sim::detail::warp_reduce_u32(#name, ttt::sim::detail::ReduceOp::op, mask, value);          \
  }
TTT_SIM_WARP_REDUCE(__reduce_add_sync, Add)
TTT_SIM_WARP_REDUCE(__reduce_min_sync, Min)
TTT_SIM_WARP_REDUCE(__reduce_max_sync, Max)
TTT_SIM_WARP_REDUCE(__reduce_and_sync, And)
TTT_SIM_WARP_REDUCE(__reduce_or_sync, Or)
TTT_SIM_WARP_REDUCE(__reduce_xor_sync, Xor)
#undef TTT_SIM_WARP_REDUCE
#define TTT_SIM_WARP_REDUCE(name, op)                                                                      \
  inline int name(unsigned mask, int value) {                                                              \
    return ttt::sim::detail::warp_reduce_i32(#name, ttt::sim::detail::ReduceOp::op, mask, value);          \
  }
TTT_SIM_WARP_REDUCE(__reduce_add_sync, Add)
TTT_SIM_WARP_REDUCE(__reduce_min_sync, Min)
TTT_SIM_WARP_REDUCE(__reduce_max_sync, Max)
#undef TTT_SIM_WARP_REDUCE

// ---- Atomics --------------------------------------------------------------------------------------------------------
// Real atomics (blocks run concurrently on several OS threads), relaxed like CUDA's; __threadfence orders them.
// Shared memory belongs to one OS thread, where the same functions are simply correct.

// The atomics report themselves to the memory checks as atomics (ttt::sim::detail::atomic_access) rather than
// through the instrumentation, which would see plain loads and stores.
#define TTT_SIM_ATOMIC __attribute__((no_sanitize("kernel-address"))) inline

namespace ttt::sim::detail {
// Compare-and-swap loop applying `op` to *addr; returns the old value.
template <class T, class Op>
TTT_SIM_ATOMIC T atomic_update(T* addr, Op op) {
  atomic_access(addr, sizeof(T));
  T old;
  __atomic_load(addr, &old, __ATOMIC_RELAXED);
  T desired = op(old);
  while (!__atomic_compare_exchange(addr, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    desired = op(old);
  }
  return old;
}
}  // namespace ttt::sim::detail

// An atomic read-modify-write `name` through the GCC builtin `builtin`.
#define TTT_SIM_ATOMIC_BUILTIN(T, name, builtin)                                                         \
  TTT_SIM_ATOMIC T name(T* a, T v) {                                                                      \
    ttt::sim::detail::atomic_access(a, sizeof(T));                                                        \
    return builtin(a, v, __ATOMIC_RELAXED);                                                               \
  }
#define TTT_SIM_ATOMIC_INTEGER(T)                                                                         \
  TTT_SIM_ATOMIC_BUILTIN(T, atomicAdd, __atomic_fetch_add)                                                \
  TTT_SIM_ATOMIC_BUILTIN(T, atomicSub, __atomic_fetch_sub)                                                \
  TTT_SIM_ATOMIC_BUILTIN(T, atomicExch, __atomic_exchange_n)                                              \
  TTT_SIM_ATOMIC_BUILTIN(T, atomicAnd, __atomic_fetch_and)                                                \
  TTT_SIM_ATOMIC_BUILTIN(T, atomicOr, __atomic_fetch_or)                                                  \
  TTT_SIM_ATOMIC_BUILTIN(T, atomicXor, __atomic_fetch_xor)                                                \
  TTT_SIM_ATOMIC T atomicMax(T* a, T v) {                                                                 \
    return ttt::sim::detail::atomic_update(a, [v](T old) { return old < v ? v : old; });                  \
  }                                                                                                       \
  TTT_SIM_ATOMIC T atomicMin(T* a, T v) {                                                                 \
    return ttt::sim::detail::atomic_update(a, [v](T old) { return v < old ? v : old; });                  \
  }                                                                                                       \
  TTT_SIM_ATOMIC T atomicCAS(T* a, T compare, T v) {                                                      \
    ttt::sim::detail::atomic_access(a, sizeof(T));                                                        \
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);               \
    return compare;                                                                                       \
  }
TTT_SIM_ATOMIC_INTEGER(int)
TTT_SIM_ATOMIC_INTEGER(unsigned int)
TTT_SIM_ATOMIC_INTEGER(long long)
TTT_SIM_ATOMIC_INTEGER(unsigned long long)
#undef TTT_SIM_ATOMIC_INTEGER
#undef TTT_SIM_ATOMIC_BUILTIN

TTT_SIM_ATOMIC unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short v) {
  ttt::sim::detail::atomic_access(a, sizeof compare);
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}
TTT_SIM_ATOMIC unsigned atomicInc(unsigned* a, unsigned limit) {
  return ttt::sim::detail::atomic_update(a, [limit](unsigned old) { return old >= limit ? 0u : old + 1u; });
}
TTT_SIM_ATOMIC unsigned atomicDec(unsigned* a, unsigned limit) {
  return ttt::sim::detail::atomic_update(a,
                                         [limit](unsigned old) { return old == 0 || old > limit ? limit : old - 1u; });
}
TTT_SIM_ATOMIC float atomicExch(float* a, float v) {
  ttt::sim::detail::atomic_access(a, sizeof v);
  float old;
  __atomic_exchange(a, &v, &old, __ATOMIC_RELAXED);
  return old;
}

#define TTT_SIM_ATOMIC_ADD(T)                                                                              \
  TTT_SIM_ATOMIC T atomicAdd(T* a, T v) {                                                                  \
    return ttt::sim::detail::atomic_update(a, [v](T old) { return old + v; });                             \
  }
TTT_SIM_ATOMIC_ADD(float)
TTT_SIM_ATOMIC_ADD(double)
TTT_SIM_ATOMIC_ADD(__half)
TTT_SIM_ATOMIC_ADD(__half2)
TTT_SIM_ATOMIC_ADD(__nv_bfloat16)
TTT_SIM_ATOMIC_ADD(__nv_bfloat162)
#undef TTT_SIM_ATOMIC_ADD
#undef TTT_SIM_ATOMIC

// ---- Loads and stores with cache hints: plain accesses ------------------------------------------------------------

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldca(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcs(const T* p) {
  return *p;
}
template <class T>
inline T __ldlu(const T* p) {
  return *p;
}
template <class T>
inline void __stcg(T* p, T v) {
  *p = v;
}
template <class T>
inline void __stcs(T* p, T v) {
  *p = v;
}
template <class T>
inline void __stwt(T* p, T v) {
  *p = v;
}

// ---- Math and bit intrinsics ----------------------------------------------------------------------------------------
// The fast approximations (__expf, __fdividef, ...) are computed at full precision here: compare simulated results
// with references through a tolerance that covers the hardware's approximation error.

inline float __expf(float x) { return ::expf(x); }
inline float __exp10f(float x) { return ::powf(10.0f, x); }
inline float __logf(float x) { return ::logf(x); }
inline float __log2f(float x) { return ::log2f(x); }
inline float __log10f(float x) { return ::log10f(x); }
inline float __sinf(float x) { return ::sinf(x); }
inline float __cosf(float x) { return ::cosf(x); }
inline float __tanf(float x) { return ::tanf(x); }
inline void __sincosf(float x, float* s, float* c) {
  *s = ::sinf(x);
  *c = ::cosf(x);
}
inline float __powf(float x, float y) { return ::powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return ::sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / ::sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return ::fmaf(a, b, c); }
inline int __float2int_rn(float x) { return static_cast<int>(::nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(::floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(::ceilf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }

inline int __float_as_int(float x) {
  int r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline unsigned __float_as_uint(float x) {
  unsigned r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline float __int_as_float(int x) {
  float r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline float __uint_as_float(unsigned x) {
  float r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline long long __double_as_longlong(double x) {
  long long r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline double __longlong_as_double(long long x) {
  double r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}

// CUDA's global min/max overloads (non-templates, so they win over std::min/std::max brought in by a using).
#define TTT_SIM_MIN_MAX(R, A, B)                                                        \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
TTT_SIM_MIN_MAX(int, int, int)
TTT_SIM_MIN_MAX(unsigned, unsigned, unsigned)
TTT_SIM_MIN_MAX(unsigned, int, unsigned)
TTT_SIM_MIN_MAX(unsigned, unsigned, int)
TTT_SIM_MIN_MAX(long, long, long)
TTT_SIM_MIN_MAX(unsigned long, unsigned long, unsigned long)
TTT_SIM_MIN_MAX(long long, long long, long long)
TTT_SIM_MIN_MAX(unsigned long long, unsigned long long, unsigned long long)
#undef TTT_SIM_MIN_MAX
inline float min(float a, float b) { return ::fminf(a, b); }
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(a, b); }
inline double max(float a, double b) { return std::fmax(a, b); }
inline double min(double a, float b) { return std::fmin(a, b); }
inline double max(double a, float b) { return std::fmax(a, b); }
