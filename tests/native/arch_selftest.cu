// Self-test kernels of device/arch.h (parameters and shapes: include/ttt_kernels/arch_selftest.h). Each runs one
// warp. tests/test_arch.py checks their outputs against torch.matmul and the PTX ISA's fragment formulas, in the
// simulator and, when there is one, on a GPU. Tiles live in dynamic shared memory, which the simulator
// bounds-checks for ldmatrix and cp.async.
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/arch.h"
#include "ttt_kernels/device/launch.h"
#include "arch_selftest.h"

#include <stdexcept>
#include <string>

namespace ttt::TTT_CUDA_NS {
namespace {

constexpr int kWarp = 32;

// ---- mma: global -> shared -> ldmatrix -> mma.m16n8k16 -> global ----------------------------------------------

// Rows are padded to 24 elements (48 bytes) so that the 8 rows of an 8x8 matrix are not contiguous: ldmatrix has to
// use each lane's row address.
constexpr int kMmaPitch = 24;
struct alignas(16) MmaSmem {
  uint16_t a[16][kMmaPitch];  // A (m, k), or A^T (k, m) when Trans
  uint16_t b[16][kMmaPitch];  // B^T (n, k) in rows 0..7, or B (k, n) when Trans
};

template <class Elem, bool Trans>
__global__ void __launch_bounds__(kWarp) arch_mma_kernel(ArchMmaSelftestParams p) {
  MmaSmem& smem = *dynamic_smem<MmaSmem>();
  const int lane = static_cast<int>(threadIdx.x);
  const auto* a_g = static_cast<const uint16_t*>(p.a);
  const auto* b_g = static_cast<const uint16_t*>(p.b);
  constexpr int kBCols = Trans ? 8 : 16;
  for (int i = lane; i < 16 * 16; i += kWarp) smem.a[i / 16][i % 16] = a_g[i];
  for (int i = lane; i < 16 * 8; i += kWarp) smem.b[i / kBCols][i % kBCols] = b_g[i];
  __syncthreads();

  // Lane l gives row l % 8 of 8x8 matrix l / 8. A's fragment register r is A[8 * (r % 2) .., 8 * (r / 2) ..] and
  // B's register r is B[8 * r .., 0 ..] (k, n); lanes 16..31 of the .x2 loads pass valid rows that are ignored.
  const int mat = lane / 8;
  const int row = lane % 8;
  uint32_t a[4];
  uint32_t b[2];
  if constexpr (Trans) {
    arch::ldmatrix_trans(a, &smem.a[8 * (mat / 2) + row][8 * (mat % 2)]);
    arch::ldmatrix_trans(b, &smem.b[8 * (mat % 2) + row][0]);
  } else {
    arch::ldmatrix(a, &smem.a[8 * (mat % 2) + row][8 * (mat / 2)]);
    arch::ldmatrix(b, &smem.b[row][8 * (mat % 2)]);
  }

  float acc[4];
  for (int i = 0; i < 4; ++i) {
    const arch::RowCol rc = arch::mma_c_coord(lane, i);
    acc[i] = p.c[rc.row * 8 + rc.col];
  }
  arch::mma_m16n8k16<Elem>(acc, a, b, acc);
  for (int i = 0; i < 4; ++i) {
    const arch::RowCol rc = arch::mma_c_coord(lane, i);
    p.d[rc.row * 8 + rc.col] = acc[i];
  }
  // Accumulator elements 2j and 2j + 1 are adjacent columns of one row: one packed 32-bit store each.
  for (int j = 0; j < 2; ++j) {
    const arch::RowCol rc = arch::mma_c_coord(lane, 2 * j);
    static_cast<uint32_t*>(p.d16)[(rc.row * 8 + rc.col) / 2] = arch::pack2<Elem>(acc[2 * j], acc[2 * j + 1]);
  }
}

// ---- ldmatrix: every lane's registers to global memory ------------------------------------------------------------

// Row r of the source lives in slot (5 r + 3) % 32 (a permutation), slot 32 holds junk for the ignored lanes.
constexpr int kLdsmJunkSlot = 32;
constexpr uint16_t kLdsmJunk = 0xDEAD;
struct alignas(16) LdsmSmem {
  uint16_t rows[kLdsmJunkSlot + 1][8];
};

__device__ __forceinline__ int ldsm_slot(int row) { return (5 * row + 3) % 32; }

template <int Num, bool Trans>
__global__ void __launch_bounds__(kWarp) arch_ldmatrix_kernel(ArchLdmatrixSelftestParams p) {
  LdsmSmem& smem = *dynamic_smem<LdsmSmem>();
  const int lane = static_cast<int>(threadIdx.x);
  for (int i = lane; i < 8 * Num * 8; i += kWarp) smem.rows[ldsm_slot(i / 8)][i % 8] = p.src[i];
  if (lane < 8) smem.rows[kLdsmJunkSlot][lane] = kLdsmJunk;
  __syncthreads();

  uint32_t r[Num];
  const uint16_t* row = lane < 8 * Num ? smem.rows[ldsm_slot(lane)] : smem.rows[kLdsmJunkSlot];
  if constexpr (Trans) {
    arch::ldmatrix_trans(r, row);
  } else {
    arch::ldmatrix(r, row);
  }
  for (int i = 0; i < Num; ++i) p.out[lane * Num + i] = r[i];
}

// ---- cp.async: two commit groups per thread, snapshots after wait_group 2, 1 and 0 --------------------------------

template <int Bytes, bool CacheGlobal>
__device__ __forceinline__ void cp_async_chunk(void* dst, const void* src, int src_bytes) {
  if constexpr (CacheGlobal) {
    if (src_bytes == Bytes) {
      arch::cp_async_cg(dst, src);
    } else {
      arch::cp_async_cg(dst, src, src_bytes);
    }
  } else {
    if (src_bytes == Bytes) {
      arch::cp_async_ca<Bytes>(dst, src);
    } else {
      arch::cp_async_ca<Bytes>(dst, src, src_bytes);
    }
  }
}

template <int Total>
__device__ __forceinline__ void snapshot(const uint8_t* buf, uint8_t* out, int lane) {
  __syncthreads();  // every thread's completed copies are visible
  for (int i = lane; i < Total; i += kWarp) out[i] = buf[i];
  __syncthreads();  // nobody completes more copies before the snapshot is taken
}

template <int Bytes>
struct alignas(16) CpAsyncSmem {
  uint8_t buf[2 * kWarp * Bytes];
};

template <int Bytes, bool CacheGlobal>
__global__ void __launch_bounds__(kWarp) arch_cp_async_kernel(ArchCpAsyncSelftestParams p) {
  constexpr int kTotal = 2 * kWarp * Bytes;
  CpAsyncSmem<Bytes>& smem = *dynamic_smem<CpAsyncSmem<Bytes>>();
  const int lane = static_cast<int>(threadIdx.x);
  for (int i = lane; i < kTotal; i += kWarp) smem.buf[i] = kArchSelftestSentinel;
  __syncthreads();

  for (int chunk = lane; chunk < 2 * kWarp; chunk += kWarp) {
    const int offset = chunk * Bytes;
    const int left = p.valid_bytes - offset;
    const int src_bytes = left <= 0 ? 0 : (left < Bytes ? left : Bytes);
    // A chunk wholly out of bounds reads nothing: any valid address will do.
    cp_async_chunk<Bytes, CacheGlobal>(smem.buf + offset, src_bytes > 0 ? p.src + offset : p.src, src_bytes);
    arch::cp_async_commit();
  }
  arch::cp_async_wait<2>();
  snapshot<kTotal>(smem.buf, p.out, lane);
  arch::cp_async_wait<1>();
  snapshot<kTotal>(smem.buf, p.out + kTotal, lane);
  arch::cp_async_wait<0>();
  snapshot<kTotal>(smem.buf, p.out + 2 * kTotal, lane);
}

template <int Num>
void launch_ldmatrix(const ArchLdmatrixSelftestParams& p, void* stream) {
  if (p.trans) {
    launch(arch_ldmatrix_kernel<Num, true>, dim3(1), dim3(kWarp), sizeof(LdsmSmem), stream, p);
  } else {
    launch(arch_ldmatrix_kernel<Num, false>, dim3(1), dim3(kWarp), sizeof(LdsmSmem), stream, p);
  }
}

template <int Bytes, bool CacheGlobal>
void launch_cp_async(const ArchCpAsyncSelftestParams& p, void* stream) {
  launch(arch_cp_async_kernel<Bytes, CacheGlobal>, dim3(1), dim3(kWarp), sizeof(CpAsyncSmem<Bytes>), stream, p);
}

}  // namespace

void arch_selftest_mma(const ArchMmaSelftestParams& p, void* stream) {
  if (p.bf16) {
    if (p.trans) {
      launch(arch_mma_kernel<__nv_bfloat16, true>, dim3(1), dim3(kWarp), sizeof(MmaSmem), stream, p);
    } else {
      launch(arch_mma_kernel<__nv_bfloat16, false>, dim3(1), dim3(kWarp), sizeof(MmaSmem), stream, p);
    }
  } else {
    if (p.trans) {
      launch(arch_mma_kernel<__half, true>, dim3(1), dim3(kWarp), sizeof(MmaSmem), stream, p);
    } else {
      launch(arch_mma_kernel<__half, false>, dim3(1), dim3(kWarp), sizeof(MmaSmem), stream, p);
    }
  }
}

void arch_selftest_ldmatrix(const ArchLdmatrixSelftestParams& p, void* stream) {
  switch (p.num) {
    case 1: return launch_ldmatrix<1>(p, stream);
    case 2: return launch_ldmatrix<2>(p, stream);
    case 4: return launch_ldmatrix<4>(p, stream);
    default:
      throw std::invalid_argument("arch_selftest_ldmatrix: num must be 1, 2 or 4, got " + std::to_string(p.num));
  }
}

void arch_selftest_cp_async(const ArchCpAsyncSelftestParams& p, void* stream) {
  if (p.valid_bytes < 0 || p.valid_bytes > 2 * kWarp * p.bytes) {
    throw std::invalid_argument("arch_selftest_cp_async: valid_bytes must be in [0, " +
                                std::to_string(2 * kWarp * p.bytes) + "], got " + std::to_string(p.valid_bytes));
  }
  if (p.cache_global) {
    if (p.bytes != 16) {
      throw std::invalid_argument("arch_selftest_cp_async: cp.async.cg copies 16 bytes, got bytes=" +
                                  std::to_string(p.bytes));
    }
    return launch_cp_async<16, true>(p, stream);
  }
  switch (p.bytes) {
    case 4: return launch_cp_async<4, false>(p, stream);
    case 8: return launch_cp_async<8, false>(p, stream);
    case 16: return launch_cp_async<16, false>(p, stream);
    default:
      throw std::invalid_argument("arch_selftest_cp_async: bytes must be 4, 8 or 16, got " + std::to_string(p.bytes));
  }
}

}  // namespace ttt::TTT_CUDA_NS
