// Per-lane register layouts of the warp-level tensor-core instructions used by the kernels, as pure functions.
//
// Sources: PTX ISA 8.x, "Matrix Fragments for mma.m16n8k16 with floating point type" and "Warp-level matrix load
// instruction: ldmatrix"; cross-checked element by element against CuTe's SM80_16x8x16_F32BF16BF16F32_TN MMA traits
// and SM75_*_LDSM_* copy traits by tests/arch/cute_layout_check.cpp.
//
// These functions are the only place the layouts are written down: the simulator's mma/ldmatrix (arch.h) gather and
// scatter fragments through them, kernels may use them to index accumulators in epilogues, and the host test checks
// them against CuTe. Plain C++17, no CUDA headers needed.
//
// Notation: lane in [0, 32); a 32-bit register holds two 16-bit elements, `half` 0 in bits 0..15 and `half` 1 in bits
// 16..31 (the element with the smaller column index for A, C/D and non-transposed ldmatrix; the smaller row index
// for B and transposed ldmatrix). groupID = lane / 4, threadID_in_group = lane % 4 (the PTX ISA's names).
#pragma once

// Every entity of namespace ttt::arch lives in an inline namespace named after the compiler, so the nvcc and the
// host (simulator) definitions never share a mangled name when both copies of the kernels link into one library.
#if defined(__CUDACC__)
#define TTT_ARCH_HD __host__ __device__ __forceinline__
#define TTT_ARCH_ABI nvcc
#else
#define TTT_ARCH_HD inline
#define TTT_ARCH_ABI host
#endif

namespace ttt::arch {
inline namespace TTT_ARCH_ABI {

struct RowCol {
  int row;
  int col;
};

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ------------------------------------------
// D[16x8] = A[16x16] * B[16x8] + C[16x8]. A: uint32_t[4] per lane (a0..a7), B: uint32_t[2] (b0..b3), C/D: float[4].

// A (M=16 x K=16, "row"): register r of a lane holds rows groupID + 8 * (r % 2), columns 8 * (r / 2) + 2 * tig + half.
TTT_ARCH_HD constexpr RowCol mma_a_coord(int lane, int reg, int half) {
  return {lane / 4 + 8 * (reg % 2), 8 * (reg / 2) + 2 * (lane % 4) + half};
}

// B (K=16 x N=8, "col"): register r holds rows (k) 8 * r + 2 * tig + half of column (n) groupID.
TTT_ARCH_HD constexpr RowCol mma_b_coord(int lane, int reg, int half) {
  return {8 * reg + 2 * (lane % 4) + half, lane / 4};
}

// C/D (M=16 x N=8, fp32): element i holds row groupID + 8 * (i / 2), column 2 * tig + i % 2.
TTT_ARCH_HD constexpr RowCol mma_c_coord(int lane, int i) {
  return {lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2};
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 --------------------------------------------------
// Loads num = 1, 2 or 4 matrices of 8x8 16-bit elements. Each matrix row is 16 contiguous bytes at an address given
// by one lane: lanes 0..8*num-1 supply them (the addresses of the other lanes are ignored).

// The lane whose address is row `row` of matrix `matrix`.
TTT_ARCH_HD constexpr int ldmatrix_row_lane(int matrix, int row) { return 8 * matrix + row; }

// Register `reg` of every lane holds part of matrix `reg`. Without .trans a lane receives row groupID, columns
// 2 * tig + half of the stored matrix; with .trans the transposed element: row 2 * tig + half, column groupID.
// `col` indexes 16-bit elements within the stored 16-byte row.
struct LdmatrixCoord {
  int matrix;
  int row;
  int col;
};
TTT_ARCH_HD constexpr LdmatrixCoord ldmatrix_coord(int lane, int reg, int half, bool trans) {
  return trans ? LdmatrixCoord{reg, 2 * (lane % 4) + half, lane / 4}
               : LdmatrixCoord{reg, lane / 4, 2 * (lane % 4) + half};
}

}  // namespace TTT_ARCH_ABI
}  // namespace ttt::arch
