// Host-only check of include/ttt_kernels/device/fragment_layout.h against CuTe's layouts of the same instructions.
//
// For every (lane, register, element) of mma.m16n8k16 A/B/C and of ldmatrix x1/x2/x4 (.trans and not), the (row, col)
// given by our functions must equal the coordinate CuTe's traits assign to that (thread, value), evaluated on the host:
//   MMA_Traits<SM80_16x8x16_F32BF16BF16F32_TN>: ALayout (thr, val) -> m + 16 k, BLayout -> n + 8 k,
//   CLayout -> m + 16 n.
//   Copy_Traits<SM75_U32x{1,2,4}_LDSM_N / SM75_U16x{2,4,8}_LDSM_T>: DstLayout (thr, val) -> bit of the loaded data,
//   SrcLayout (thr, val) -> the same bit, as (address-supplying thread, bit within its 128-bit row).
// Build: g++ -std=c++17 -I include -isystem <cutlass>/include -isystem <cuda>/include tests/arch/cute_layout_check.cpp
// Prints one line per mismatch and a summary; exits non-zero on any mismatch.
#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/mma_traits_sm80.hpp>

#include <cstdio>
#include <map>
#include <utility>

#include "ttt_kernels/device/fragment_layout.h"

namespace {

using namespace ttt::arch;

int g_checks = 0;
int g_failures = 0;

void expect(bool ok, const char* what, int lane, int reg, int half, int want_a, int want_b, int got_a, int got_b) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("MISMATCH %s lane %d reg %d elem %d: CuTe (%d, %d), fragment_layout.h (%d, %d)\n", what, lane, reg,
                half, want_a, want_b, got_a, got_b);
  }
}

void check_mma() {
  using Traits = cute::MMA_Traits<cute::SM80_16x8x16_F32BF16BF16F32_TN>;
  static_assert(cute::size<0>(typename Traits::Shape_MNK{}) == 16 && cute::size<1>(typename Traits::Shape_MNK{}) == 8 &&
                cute::size<2>(typename Traits::Shape_MNK{}) == 16);
  static_assert(cute::size(typename Traits::ThrID{}) == 32);
  const typename Traits::ALayout a_layout{};
  const typename Traits::BLayout b_layout{};
  const typename Traits::CLayout c_layout{};
  static_assert(cute::size<1>(typename Traits::ALayout{}) == 8 && cute::size<1>(typename Traits::BLayout{}) == 4 &&
                cute::size<1>(typename Traits::CLayout{}) == 4);
  for (int lane = 0; lane < 32; ++lane) {
    // A and B values are numbered a0..a7 / b0..b3 as in the PTX ISA: value v is element v % 2 of register v / 2.
    for (int v = 0; v < 8; ++v) {
      const int idx = a_layout(lane, v);  // (M16, K16) column-major
      const RowCol rc = mma_a_coord(lane, v / 2, v % 2);
      expect(rc.row == idx % 16 && rc.col == idx / 16, "mma A (m, k)", lane, v / 2, v % 2, idx % 16, idx / 16, rc.row,
             rc.col);
    }
    for (int v = 0; v < 4; ++v) {
      const int idx = b_layout(lane, v);  // (N8, K16) column-major
      const RowCol rc = mma_b_coord(lane, v / 2, v % 2);
      expect(rc.row == idx / 8 && rc.col == idx % 8, "mma B (k, n)", lane, v / 2, v % 2, idx / 8, idx % 8, rc.row,
             rc.col);
    }
    for (int v = 0; v < 4; ++v) {
      const int idx = c_layout(lane, v);  // (M16, N8) column-major
      const RowCol rc = mma_c_coord(lane, v);
      expect(rc.row == idx % 16 && rc.col == idx / 16, "mma C/D (m, n)", lane, v, 0, idx % 16, idx / 16, rc.row,
             rc.col);
    }
  }
}

template <class Op, int Num, bool Trans>
void check_ldmatrix(const char* name) {
  using Traits = cute::Copy_Traits<Op>;
  const typename Traits::SrcLayout src{};
  const typename Traits::DstLayout dst{};
  static_assert(cute::size(typename Traits::DstLayout{}) == 32 * 32 * Num);

  // Invert SrcLayout over the address-supplying lanes: bit -> (lane, bit within that lane's 16-byte row). Lanes
  // 8*Num.. repeat earlier rows in CuTe's model (their addresses are ignored by the hardware), so they are skipped.
  std::map<int, std::pair<int, int>> src_of_bit;
  for (int t = 0; t < 8 * Num; ++t) {
    for (int b = 0; b < 128; ++b) {
      src_of_bit.emplace(int(src(t, b)), std::make_pair(t, b));
    }
  }
  ++g_checks;
  if (src_of_bit.size() != size_t(8 * Num * 128)) {  // each loaded bit comes from exactly one row address
    ++g_failures;
    std::printf("MISMATCH %s: lanes 0..%d do not address %d distinct bits in CuTe's SrcLayout\n", name, 8 * Num - 1,
                8 * Num * 128);
  }

  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < Num; ++reg) {
      for (int half = 0; half < 2; ++half) {
        const LdmatrixCoord c = ldmatrix_coord(lane, reg, half, Trans);
        const int addr_lane = ldmatrix_row_lane(c.matrix, c.row);
        for (int bit = 0; bit < 16; ++bit) {
          // Destination value index: bit within the 16-bit element, then the element, then the register; this is the
          // column-major flattening of both the (32, Num) and the (16, 2, Num) value shapes of the N and T traits.
          const auto it = src_of_bit.find(int(dst(lane, bit + 16 * half + 32 * reg)));
          const bool found = it != src_of_bit.end();
          const int want_lane = found ? it->second.first : -1;
          const int want_bit = found ? it->second.second : -1;
          expect(found && want_lane == addr_lane && want_bit == 16 * c.col + bit, name, lane, reg, half, want_lane,
                 want_bit, addr_lane, 16 * c.col + bit);
        }
      }
    }
  }
}

}  // namespace

int main() {
  check_mma();
  check_ldmatrix<cute::SM75_U32x1_LDSM_N, 1, false>("ldmatrix.x1 (row lane, row bit)");
  check_ldmatrix<cute::SM75_U32x2_LDSM_N, 2, false>("ldmatrix.x2 (row lane, row bit)");
  check_ldmatrix<cute::SM75_U32x4_LDSM_N, 4, false>("ldmatrix.x4 (row lane, row bit)");
  check_ldmatrix<cute::SM75_U16x2_LDSM_T, 1, true>("ldmatrix.x1.trans (row lane, row bit)");
  check_ldmatrix<cute::SM75_U16x4_LDSM_T, 2, true>("ldmatrix.x2.trans (row lane, row bit)");
  check_ldmatrix<cute::SM75_U16x8_LDSM_T, 4, true>("ldmatrix.x4.trans (row lane, row bit)");
  std::printf("%d checks, %d mismatches\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
