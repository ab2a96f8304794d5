// Tensor-core and asynchronous-copy primitives for sm_80+ kernels, in namespace ttt::arch (docs/arch.md).
//
//   mma_m16n8k16<Elem>(d, a, b, c)      mma.sync.aligned.m16n8k16.row.col.f32.Elem.Elem.f32, Elem = __nv_bfloat16 or
//                                        __half: d[16x8] = a[16x16] * b[16x8] + c[16x8]; per lane a uint32_t[4],
//                                        b uint32_t[2], c and d float[4] (d may be c)
//   ldmatrix(r, row), ldmatrix_trans     ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16, x1/x2/x4 from the
//                                        size of r (uint32_t[1], [2] or [4]); `row`: this lane's row address
//   cp_async_ca<Bytes>(dst, src[, n])    cp.async.ca.shared.global, Bytes = 4, 8 or 16
//   cp_async_cg(dst, src[, n])           cp.async.cg.shared.global, 16 bytes
//                                        n (src-size): copy n bytes and zero-fill the rest; n = 0 reads nothing
//   cp_async_commit(), cp_async_wait<N>(), cp_async_wait_all()
//   pack2<Elem>(lo, hi)                  two floats -> one bf16x2 / f16x2 register, lo in bits 0..15, round to nearest
// Fragment layouts (which element each lane's registers hold): fragment_layout.h, included here.
//
// Include this header at file scope, never inside namespace ttt::TTT_CUDA_NS; kernels there call arch::mma_m16n8k16
// etc. Under nvcc the primitives are inline PTX. In the simulator (TTT_SIM) mma and ldmatrix are warp collectives that
// rebuild the whole operands from the 32 lanes' registers through fragment_layout.h, so a kernel that puts a value in
// the wrong register gets a wrong answer; cp.async copies land only at the wait that completes their group, so a
// missing wait reads stale shared memory. Everything is inline and lives in the inline namespace TTT_ARCH_ABI (see
// fragment_layout.h), so the nvcc and the simulator definitions never clash when both link into one library.
#pragma once

#include <cstdint>
#include <type_traits>

#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/fragment_layout.h"

#if defined(__CUDACC__)
#define TTT_ARCH_DEVICE __device__ __forceinline__
#else  // TTT_SIM: runtime.h rejects any other build
#include <cstring>
#include <string>
#define TTT_ARCH_DEVICE inline
#endif

namespace ttt::arch {
inline namespace TTT_ARCH_ABI {

template <class Elem>
inline constexpr bool kIsMmaElem = std::is_same_v<Elem, __nv_bfloat16> || std::is_same_v<Elem, __half>;

namespace detail {

#if defined(__CUDACC__)
// Shared-window address of a generic pointer into shared memory: the operand of the .shared instructions.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#else
// Element `half` (0: bits 0..15, 1: bits 16..31) of a packed register, as fp32 (exact).
template <class Elem>
inline float unpack(uint32_t reg, int half) {
  const auto bits = static_cast<unsigned short>(reg >> (16 * half));
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

struct MmaLane {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

// Rebuilds A[16x16], B[16x8] and C[16x8] from the 32 lanes' fragments and writes every lane's D fragment.
// D[m][n] is an fp32 sum in k order starting from C[m][n]: acc = acc + A[m][k] * B[k][n], rounded to nearest-even
// at each step. A product of two bf16 or two fp16 values is exact in fp32 (barring fp32 overflow/underflow of bf16
// products), so each step rounds once. The tensor cores sum the products with their own internal precision and
// rounding, so results can differ from hardware in the last bits of fp32: compare kernels with a tolerance.
template <class Elem>
void mma_m16n8k16_combine(const void* const* ins, void* const* outs, unsigned /*mask: the full warp*/) {
  float a[16][16];
  float b[16][8];
  float c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaLane& in = *static_cast<const MmaLane*>(ins[lane]);
    for (int half = 0; half < 2; ++half) {
      for (int reg = 0; reg < 4; ++reg) {
        const RowCol rc = mma_a_coord(lane, reg, half);
        a[rc.row][rc.col] = unpack<Elem>(in.a[reg], half);
      }
      for (int reg = 0; reg < 2; ++reg) {
        const RowCol rc = mma_b_coord(lane, reg, half);
        b[rc.row][rc.col] = unpack<Elem>(in.b[reg], half);
      }
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol rc = mma_c_coord(lane, i);
      c[rc.row][rc.col] = in.c[i];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    float* d = static_cast<float*>(outs[lane]);
    for (int i = 0; i < 4; ++i) {
      const RowCol rc = mma_c_coord(lane, i);
      float acc = c[rc.row][rc.col];
      for (int k = 0; k < 16; ++k) {
        acc += a[rc.row][k] * b[k][rc.col];
      }
      d[i] = acc;
    }
  }
}

// Fills every lane's registers from the rows addressed by lanes 0..8*Num-1; the other lanes' addresses are ignored,
// as on sm_80+.
template <bool Trans, int Num>
void ldmatrix_combine(const void* const* ins, void* const* outs, unsigned /*mask: the full warp*/) {
  for (int lane = 0; lane < 32; ++lane) {
    uint32_t* r = static_cast<uint32_t*>(outs[lane]);
    for (int reg = 0; reg < Num; ++reg) {
      uint32_t packed = 0;
      for (int half = 0; half < 2; ++half) {
        const LdmatrixCoord e = ldmatrix_coord(lane, reg, half, Trans);
        const auto* row = *static_cast<const unsigned char* const*>(ins[ldmatrix_row_lane(e.matrix, e.row)]);
        uint16_t v;
        std::memcpy(&v, row + 2 * e.col, sizeof v);
        packed |= uint32_t{v} << (16 * half);
      }
      r[reg] = packed;
    }
  }
}

// The instruction a cp.async of `Bytes` bytes executes, cached in L1 and L2 (ca) or L2 only (cg), for messages and
// ttt::sim::note_instruction.
template <bool CacheGlobal, int Bytes>
constexpr const char* cp_async_name() {
  if constexpr (CacheGlobal) return "cp.async.cg.shared.global (16 bytes)";
  if constexpr (Bytes == 4) return "cp.async.ca.shared.global (4 bytes)";
  if constexpr (Bytes == 8) return "cp.async.ca.shared.global (8 bytes)";
  return "cp.async.ca.shared.global (16 bytes)";
}

// One cp.async of `bytes` bytes: `src_bytes` from gmem_src, zeros after them. Both parts land at the wait that
// completes the group; the zeros come from a static block, so the deferred copy reads nothing past the source.
inline void cp_async(const char* name, void* smem_dst, const void* gmem_src, int bytes, int src_bytes) {
  alignas(16) static constexpr unsigned char kZeros[16] = {};
  ttt::sim::note_instruction(name);
  ttt::sim::check_shared_access(name, smem_dst, bytes, bytes);
  if (src_bytes < 0 || src_bytes > bytes) {
    ttt::sim::fail(std::string(name) + ": src-size " + std::to_string(src_bytes) + " is outside [0, " +
                   std::to_string(bytes) + "]");
  }
  if (src_bytes > 0) {
    ttt::sim::check_global_access(name, gmem_src, src_bytes, bytes);
    ttt::sim::async_copy_enqueue(smem_dst, gmem_src, src_bytes);
  }
  if (src_bytes < bytes) {
    ttt::sim::async_copy_enqueue(static_cast<unsigned char*>(smem_dst) + src_bytes, kZeros, bytes - src_bytes);
  }
}
#endif

template <bool Trans, int Num>
TTT_ARCH_DEVICE void ldmatrix(uint32_t (&r)[Num], const void* row) {
  static_assert(Num == 1 || Num == 2 || Num == 4, "ldmatrix: the destination must be uint32_t[1], [2] or [4]");
#if defined(__CUDACC__)
  const uint32_t addr = smem_addr(row);
  if constexpr (Num == 1) {
    if constexpr (Trans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
    }
  } else if constexpr (Num == 2) {
    if constexpr (Trans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                   : "=r"(r[0]), "=r"(r[1])
                   : "r"(addr));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                   : "=r"(r[0]), "=r"(r[1])
                   : "r"(addr));
    }
  } else {
    if constexpr (Trans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                   : "r"(addr));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                   : "r"(addr));
    }
  }
#else
  static constexpr const char* kNames[2][3] = {
      {"ldmatrix.sync.aligned.m8n8.x1.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.shared.b16",
       "ldmatrix.sync.aligned.m8n8.x4.shared.b16"},
      {"ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
       "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"}};
  const char* name = kNames[Trans][Num / 2];
  ttt::sim::note_instruction(name);
  const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
  if (lane < 8 * Num) ttt::sim::check_shared_access(name, row, 16, 16);
  const void* in = row;
  uint32_t out[Num];
  ttt::sim::warp_collective(name, 0xffffffffu, &in, out, &ldmatrix_combine<Trans, Num>);
  for (int i = 0; i < Num; ++i) r[i] = out[i];
#endif
}

}  // namespace detail

// ---- Packing ----------------------------------------------------------------------------------------------------

template <class Elem>
TTT_ARCH_DEVICE uint32_t pack2(float lo, float hi) {
  static_assert(kIsMmaElem<Elem>, "pack2: Elem must be __nv_bfloat16 or __half");
#if defined(__CUDACC__)
  uint32_t r;
  // cvt puts its first source in the upper half.
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
#else
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(hi))} << 16;
  } else {
    return __half_as_ushort(__float2half_rn(lo)) | uint32_t{__half_as_ushort(__float2half_rn(hi))} << 16;
  }
#endif
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 -------------------------------------------

// d = a * b + c for one warp (all 32 lanes must call it together). Fragments: fragment_layout.h (mma_a_coord,
// mma_b_coord, mma_c_coord).
template <class Elem>
TTT_ARCH_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                  const float (&c)[4]) {
  static_assert(kIsMmaElem<Elem>, "mma_m16n8k16: Elem must be __nv_bfloat16 or __half");
#if defined(__CUDACC__)
  // No "memory" clobber (mma reads and writes registers only).
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#else
  const detail::MmaLane in = {{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {c[0], c[1], c[2], c[3]}};
  float out[4];
  const char* name = std::is_same_v<Elem, __nv_bfloat16> ? "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
                                                          : "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32";
  ttt::sim::note_instruction(name);
  ttt::sim::warp_collective(name, 0xffffffffu, &in, out, &detail::mma_m16n8k16_combine<Elem>);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
#endif
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 --------------------------------------------------
// One warp (all 32 lanes together) loads Num = 1, 2 or 4 matrices of 8x8 16-bit elements from shared memory; lanes
// 8*i..8*i+7 give the addresses of the 8 rows (16 bytes each, 16-byte aligned) of matrix i, the other lanes' `row`
// is ignored. Register i of every lane holds part of matrix i (fragment_layout.h: ldmatrix_coord). No "memory"
// clobber: the shared-memory writes an ldmatrix reads are ordered by the __syncthreads/__syncwarp a correct kernel
// has between them, which are compiler barriers too.

template <int Num>
TTT_ARCH_DEVICE void ldmatrix(uint32_t (&r)[Num], const void* row) {
  detail::ldmatrix<false>(r, row);
}

// .trans: every lane receives the elements of the transposed matrices.
template <int Num>
TTT_ARCH_DEVICE void ldmatrix_trans(uint32_t (&r)[Num], const void* row) {
  detail::ldmatrix<true>(r, row);
}

// ---- cp.async ---------------------------------------------------------------------------------------------------
// Asynchronous global -> shared copies, grouped per thread by cp_async_commit; cp_async_wait<N> returns when all but
// the N most recent groups of this thread have landed (other threads see them after a __syncthreads). dst and src
// must be aligned to the copy size. The "memory" clobbers keep the compiler from sinking earlier stores to the
// destination below the copy or hoisting reads of it above the wait.

template <int Bytes>
TTT_ARCH_DEVICE void cp_async_ca(void* smem_dst, const void* gmem_src) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp_async_ca: Bytes must be 4, 8 or 16");
#if defined(__CUDACC__)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(detail::smem_addr(smem_dst)),
               "l"(__cvta_generic_to_global(gmem_src)), "n"(Bytes)
               : "memory");
#else
  detail::cp_async(detail::cp_async_name<false, Bytes>(), smem_dst, gmem_src, Bytes, Bytes);
#endif
}

// Copies src_bytes (0..Bytes) bytes and zero-fills the rest of the Bytes at smem_dst (out-of-bounds tiles).
template <int Bytes>
TTT_ARCH_DEVICE void cp_async_ca(void* smem_dst, const void* gmem_src, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp_async_ca: Bytes must be 4, 8 or 16");
#if defined(__CUDACC__)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(detail::smem_addr(smem_dst)),
               "l"(__cvta_generic_to_global(gmem_src)), "n"(Bytes), "r"(src_bytes)
               : "memory");
#else
  detail::cp_async(detail::cp_async_name<false, Bytes>(), smem_dst, gmem_src, Bytes, src_bytes);
#endif
}

// 16 bytes, cached in L2 only.
TTT_ARCH_DEVICE void cp_async_cg(void* smem_dst, const void* gmem_src) {
#if defined(__CUDACC__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(detail::smem_addr(smem_dst)),
               "l"(__cvta_generic_to_global(gmem_src))
               : "memory");
#else
  detail::cp_async(detail::cp_async_name<true, 16>(), smem_dst, gmem_src, 16, 16);
#endif
}

// 16 bytes, cached in L2 only: copies src_bytes (0..16) and zero-fills the rest.
TTT_ARCH_DEVICE void cp_async_cg(void* smem_dst, const void* gmem_src, int src_bytes) {
#if defined(__CUDACC__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(detail::smem_addr(smem_dst)),
               "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes)
               : "memory");
#else
  detail::cp_async(detail::cp_async_name<true, 16>(), smem_dst, gmem_src, 16, src_bytes);
#endif
}

TTT_ARCH_DEVICE void cp_async_commit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  ttt::sim::async_copy_commit();
#endif
}

template <int N>
TTT_ARCH_DEVICE void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait: N must be >= 0");
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
  ttt::sim::async_copy_wait(N);
#endif
}

// Commits the open group and waits for all of this thread's copies.
TTT_ARCH_DEVICE void cp_async_wait_all() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  ttt::sim::async_copy_commit();  // cp.async.wait_all is commit_group followed by wait_group 0
  ttt::sim::async_copy_wait(0);
#endif
}

}  // namespace TTT_ARCH_ABI
}  // namespace ttt::arch
