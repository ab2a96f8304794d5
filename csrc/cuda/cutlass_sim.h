// CUTLASS for the CUDA simulator: included first by the CUTLASS kernels' sources in the simulator build (TTT_SIM),
// before any CUTLASS header. The host compiler then compiles CUTLASS's device code like any kernel here, through its
// host code paths (no __CUDA_ARCH__), with two kinds of exceptions, each replaced at its definition:
//
// - PTX wrappers, whose host paths are empty, assert or are not C++ at all: ldmatrix (arch::ldsm), cp.async
//   (arch::cp_async, cp_async_zfill, cp_async_fence, cp_async_wait), predicated global accesses (arch::global_load,
//   global_store) and the serial split-K semaphore. The replacements execute the project's arch.h primitives
//   (device/arch.h), so the simulator schedules, checks and records them exactly like those of the hand-written
//   kernels; plain accesses are checked by the simulator's memory-access instrumentation like every other access.
// - Thread-index helpers whose host paths return constants (cutlass::canonical_warp_idx_sync() is 0 on the host):
//   they read threadIdx like the device paths do.
//
// Each replaced name is macro-renamed while CUTLASS's header is included (its definitions become cutlass_ptx_*,
// never called), and defined here under the original name; `#pragma once` keeps the headers from being read again.
// A wrapper CUTLASS adds later and the kernels start using is a compile error here (PTX in host code), not a silent
// difference. The tensor-core instruction is not replaced here: the kernels name arch.h's mma through their own
// operator tag (gemm_cutlass.cuh), in both builds.
#pragma once

#if !defined(TTT_SIM)
#error "cutlass_sim.h is the simulator build's CUTLASS prelude (TTT_SIM); nvcc compiles CUTLASS unchanged"
#endif

#include <cstdint>
#include <type_traits>

#include "ttt_kernels/device/arch.h"
#include "ttt_kernels/device/runtime.h"

// ---- Thread indices -------------------------------------------------------------------------------------------

#define thread0 cutlass_host_thread0
#define canonical_lane_idx cutlass_host_canonical_lane_idx
#define canonical_warp_idx_sync cutlass_host_canonical_warp_idx_sync
#define canonical_warp_idx cutlass_host_canonical_warp_idx
#define canonical_warp_group_idx cutlass_host_canonical_warp_group_idx
#include <cutlass/cutlass.h>
#undef thread0
#undef canonical_lane_idx
#undef canonical_warp_idx_sync
#undef canonical_warp_idx
#undef canonical_warp_group_idx

namespace cutlass {
inline bool thread0() {
  return threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0 && blockIdx.x == 0 && blockIdx.y == 0 &&
         blockIdx.z == 0;
}
inline int canonical_lane_idx() { return static_cast<int>(threadIdx.x) % NumThreadsPerWarp; }
inline int canonical_warp_idx_sync() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / NumThreadsPerWarp, 0);
}
inline int canonical_warp_idx() { return static_cast<int>(threadIdx.x) / NumThreadsPerWarp; }
inline int canonical_warp_group_idx() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / NumThreadsPerWarpGroup, 0);
}
}  // namespace cutlass

#include <cutlass/arch/arch.h>

namespace cutlass::arch {
// %laneid and %smid (cutlass/arch/arch.h declares them for device code only). One simulated SM.
inline int LaneId() {
  return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32);
}
inline int SmId() { return 0; }
}  // namespace cutlass::arch

// ---- Memory instructions --------------------------------------------------------------------------------------

#define ldsm cutlass_ptx_ldsm
#define global_load cutlass_ptx_global_load
#define global_store cutlass_ptx_global_store
#define cp_async cutlass_ptx_cp_async
#define cp_async_zfill cutlass_ptx_cp_async_zfill
#define cp_async_fence cutlass_ptx_cp_async_fence
#define cp_async_wait cutlass_ptx_cp_async_wait
#include <cutlass/arch/memory.h>
#include <cutlass/arch/memory_sm75.h>
#include <cutlass/arch/memory_sm80.h>
#undef ldsm
#undef global_load
#undef global_store
#undef cp_async
#undef cp_async_zfill
#undef cp_async_fence
#undef cp_async_wait

namespace cutlass::arch {

// ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16: a row-major layout loads the matrices as stored, a column-major
// one transposed (as CUTLASS's ldsm<Layout, N>).
template <typename Layout, int MatrixCount>
inline void ldsm(Array<unsigned, MatrixCount>& d, void const* ptr) {
  static_assert(std::is_same_v<Layout, layout::RowMajor> || std::is_same_v<Layout, layout::ColumnMajor>,
                "ldsm: the layout must be RowMajor or ColumnMajor");
  uint32_t r[MatrixCount];
  if constexpr (std::is_same_v<Layout, layout::RowMajor>) {
    ttt::arch::ldmatrix<MatrixCount>(r, ptr);
  } else {
    ttt::arch::ldmatrix_trans<MatrixCount>(r, ptr);
  }
  for (int i = 0; i < MatrixCount; ++i) d[i] = r[i];
}

// Predicated global accesses: nothing happens (and d keeps its value) when pred_guard is false.
template <typename AccessType, int LoadBytes, CacheOperation::Kind cache_op = CacheOperation::Always>
struct global_load {
  static_assert(sizeof(AccessType) == LoadBytes, "global_load: the access type must have LoadBytes bytes");
  global_load(AccessType& d, void const* ptr, bool pred_guard) {
    if (pred_guard) d = *static_cast<AccessType const*>(ptr);
  }
};

template <typename AccessType, int StoreBytes>
struct global_store {
  static_assert(sizeof(AccessType) == StoreBytes, "global_store: the access type must have StoreBytes bytes");
  global_store(AccessType const& d, void* ptr, bool pred_guard) {
    if (pred_guard) *static_cast<AccessType*>(ptr) = d;
  }
};

// The cp.async CUTLASS issues on sm_75 and later (CUTLASS_ENABLE_L2_PREFETCH under nvcc): .cg for 16-byte copies
// of CacheOperation::Global, .ca otherwise, with the .L2::128B prefetch hint. The name is what the simulator
// records (tests/helpers.py maps it to its SASS, LDGSTS.E.BYPASS.LTC128B.128 for .cg).
template <int SizeInBytes, CacheOperation::Kind cache_op>
constexpr const char* cp_async_name() {
  static_assert(SizeInBytes == 4 || SizeInBytes == 8 || SizeInBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  static_assert(cache_op == CacheOperation::Always || (cache_op == CacheOperation::Global && SizeInBytes == 16),
                "cp.async: CacheOperation::Global copies 16 bytes; no other cache operation exists");
  if constexpr (cache_op == CacheOperation::Global) return "cp.async.cg.shared.global.L2::128B (16 bytes)";
  if constexpr (SizeInBytes == 4) return "cp.async.ca.shared.global.L2::128B (4 bytes)";
  if constexpr (SizeInBytes == 8) return "cp.async.ca.shared.global.L2::128B (8 bytes)";
  return "cp.async.ca.shared.global.L2::128B (16 bytes)";
}

// No copy when pred_guard is false.
template <int SizeInBytes, CacheOperation::Kind cache_op = CacheOperation::Always>
struct cp_async {
  cp_async(void* smem_ptr, void const* global_ptr, bool pred_guard = true) {
    if (pred_guard) {
      ttt::arch::detail::cp_async(cp_async_name<SizeInBytes, cache_op>(), smem_ptr, global_ptr, SizeInBytes,
                                  SizeInBytes);
    }
  }
};

// Zeros instead of the source when pred_guard is false.
template <int SizeInBytes, CacheOperation::Kind cache_op = CacheOperation::Always>
struct cp_async_zfill {
  cp_async_zfill(void* smem_ptr, void const* global_ptr, bool pred_guard) {
    ttt::arch::detail::cp_async(cp_async_name<SizeInBytes, cache_op>(), smem_ptr, global_ptr, SizeInBytes,
                                pred_guard ? SizeInBytes : 0);
  }
};

inline void cp_async_fence() { ttt::arch::cp_async_commit(); }

template <int N>
inline void cp_async_wait() {
  ttt::arch::cp_async_wait<N>();
}

}  // namespace cutlass::arch

// ---- Serial split-K -------------------------------------------------------------------------------------------
// The kernels here never reduce split-K slices serially (GemmUniversalMode::kBatched); the semaphore's global
// accesses are PTX, so a launch that would use it fails.

#define Semaphore cutlass_ptx_Semaphore
#include <cutlass/semaphore.h>
#undef Semaphore

namespace cutlass {
class Semaphore {
 public:
  Semaphore(int*, int) {}
  void fetch() { unsupported(); }
  int get_state() const { unsupported(); }
  void wait(int = 0) { unsupported(); }
  void release(int = 0) { unsupported(); }

 private:
  [[noreturn]] static void unsupported() {
    ttt::sim::fail("cutlass::Semaphore (serial split-K) is not supported by the CUDA simulator");
  }
};
}  // namespace cutlass

// cutlass/device_kernel.h declares `extern __shared__` arrays, which the simulator cannot provide (its __shared__ is
// `static thread_local`); the kernels here never use those launch templates (gemm_cutlass.cuh launches its own).
#pragma push_macro("__shared__")
#undef __shared__
#define __shared__
#include <cutlass/device_kernel.h>
#pragma pop_macro("__shared__")
