// Self-test kernels of the tensor-core and cp.async primitives in device/arch.h (csrc/cuda/arch_selftest.cu), run
// from Python through torch.ops.ttt_kernels._arch_selftest (csrc/ops/arch_selftest.cpp, tests/test_arch.py).
// Each launches one warp (one block of 32 threads).
#pragma once

#include <cstdint>

namespace ttt {

struct ArchMmaSelftestParams {
  // D[16x8] (fp32, row-major) = A[16x16] * B[16x8] + C[16x8] (fp32, row-major) through shared memory, ldmatrix and
  // one mma.m16n8k16. Without `trans`: a holds A (m, k) and b holds B^T (n, k) [8x16], both row-major, loaded with
  // ldmatrix .x4 / .x2. With `trans`: a holds A^T (k, m) and b holds B (k, n) [16x8], loaded with .x4.trans /
  // .x2.trans.
  const void* a = nullptr;
  const void* b = nullptr;
  const float* c = nullptr;
  float* d = nullptr;
  void* d16 = nullptr;  // [16x8] D rounded to the element type of a and b (pack2), row-major
  bool bf16 = true;  // element type of a and b: bf16, else fp16
  bool trans = false;
};

struct ArchLdmatrixSelftestParams {
  // src: [8 * num, 8] 16-bit values, matrix i = rows 8i..8i+7. The kernel scatters the rows over shared memory, lane l
  // passes the address of row l (lanes >= 8 * num pass a row of junk, which must be ignored) and writes its
  // registers to out[l][0..num).
  const uint16_t* src = nullptr;
  uint32_t* out = nullptr;  // [32, num]
  int num = 4;              // 1, 2 or 4
  bool trans = false;
};

struct ArchCpAsyncSelftestParams {
  // Each of the 32 threads copies two `bytes`-sized chunks of src (chunk t and 32 + t) into shared memory filled with
  // kArchSelftestSentinel, one commit group per chunk; bytes at and after `valid_bytes` are zero-filled (src-size).
  // Snapshots of the shared buffer go to out[0] after cp_async_wait<2> (nothing need have landed: the simulator shows
  // the sentinel), out[1] after wait<1> (the first chunks) and out[2] after wait<0> (everything).
  const uint8_t* src = nullptr;  // [64 * bytes]
  uint8_t* out = nullptr;        // [3, 64 * bytes]
  int bytes = 16;                // 4, 8 or 16
  bool cache_global = false;     // cp.async.cg (bytes must be 16), else .ca
  int valid_bytes = 0;           // in [0, 64 * bytes]
};

inline constexpr uint8_t kArchSelftestSentinel = 0xA5;

// Launchers: nvcc build (ttt::cuda: `stream` is a cudaStream_t) and simulator (ttt::cuda_sim: `stream` is ignored).
// They throw std::invalid_argument on bad parameters and std::runtime_error on a failed launch.
namespace cuda {
void arch_selftest_mma(const ArchMmaSelftestParams& params, void* stream);
void arch_selftest_ldmatrix(const ArchLdmatrixSelftestParams& params, void* stream);
void arch_selftest_cp_async(const ArchCpAsyncSelftestParams& params, void* stream);
}  // namespace cuda

namespace cuda_sim {
void arch_selftest_mma(const ArchMmaSelftestParams& params, void* stream);
void arch_selftest_ldmatrix(const ArchLdmatrixSelftestParams& params, void* stream);
void arch_selftest_cp_async(const ArchCpAsyncSelftestParams& params, void* stream);
}  // namespace cuda_sim

}  // namespace ttt
