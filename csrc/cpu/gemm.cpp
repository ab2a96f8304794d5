// float32 GEMM of the CPU path (include/ttt_kernels/gemm.h: cpu::sgemm), AVX-512, BLIS-style:
//
//   pack all of B into [kKc][64] panels (tasks: one panel each)
//   tasks (ib, jg): ib a block of kMc rows of C, jg a group of 64-column panels (all of them when there are enough
//   row blocks to keep the threads busy):
//     for pc over k in kKc steps (the k-blocks accumulate into C; beta applies to the first):
//       pack A[ib rows, pc ..] into [kc][6] panels (per thread, reused)
//       for each panel of the group, for each 6-row panel of the block: micro-kernel
// Tasks go to threads dynamically (run_tasks), two parallel regions per GEMM.
//
// Micro-kernel: a 6 x 64 tile of C in 24 zmm accumulators; per k it loads one 64-float row of the B panel
// (4 zmm) and broadcasts 6 values of the A panel, i.e. 24 FMAs for 10 loads, all operands in registers. Packed
// panels are k-major ([kc][6] and [kc][64]) and zero-padded, so edge tiles run the same kernel into a scratch tile.
//
// Why not BLAS: MKL (torch's BLAS on x86) chooses its code paths by CPU vendor and leaves AVX-512 unused on
// non-Intel CPUs: on an AMD EPYC whose AVX-512 FMA peak is 334 GFLOP/s per core, torch.mm reaches ~95 GFLOP/s per
// core and this kernel ~170 (docs/mlp.md). On Intel CPUs MKL's own AVX-512 sgemm is used (cpu::use_sgemm()).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "ttt_kernels/cpu_parallel.h"
#include "ttt_kernels/gemm.h"

#if defined(__AVX512F__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace ttt::cpu {

#if defined(__AVX512F__)
namespace {

constexpr int kMr = 6;
constexpr int kNr = 64;
constexpr int64_t kKc = 256;  // a [kKc][64] B panel is 64 KiB (L2), the A block [kKc][kMc] 96 KiB (L2)
constexpr int64_t kMc = 96;
constexpr int64_t kGroupPanels = 4;  // B panels per task when the rows alone give too few tasks
// GEMMs below this many flops run on the calling thread: a parallel region costs more than it saves (~0.1 ms of
// work), and on a shared machine a preempted worker can hold it up for a scheduler time slice.
constexpr double kParallelFlops = 1 << 24;
// GEMMs below this many flops go to BLAS by default (use_sgemm): packing all of B dominates small products. Measured
// on an AMD EPYC (2 threads, swiglu_mlp_fwd's three GEMMs, medians of 7 interleaved runs): rows x d x m = 128 x 128 x
// 288 ran at 69 GFLOP/s here and 137 with BLAS, 128 x 256 x 576 at 116 and 162, 1024 x 128 x 288 at 160 and 178;
// from 1024 x 256 x 576 (302 MFLOP per GEMM) on both ran at 100-120.
constexpr double kNativeMinFlops = 1 << 28;

// C[0..6, 0..64) = alpha * (A panel x B panel) + beta * C (beta == 0: C is not read). a: [kc][6], b: [kc][64].
void micro_kernel(int64_t kc, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                  int64_t ldc, float alpha, float beta) {
  __m512 acc[kMr][4];
#pragma GCC unroll 6
  for (int i = 0; i < kMr; ++i) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_loadu_ps(b);
    const __m512 b1 = _mm512_loadu_ps(b + 16);
    const __m512 b2 = _mm512_loadu_ps(b + 32);
    const __m512 b3 = _mm512_loadu_ps(b + 48);
#pragma GCC unroll 6
    for (int i = 0; i < kMr; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(ai, b3, acc[i][3]);
    }
    a += kMr;
    b += kNr;
  }
  const __m512 va = _mm512_set1_ps(alpha);
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < kMr; ++i) {
    float* row = c + i * ldc;
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const __m512 r = beta == 0.0f ? _mm512_mul_ps(va, acc[i][q])
                                    : _mm512_fmadd_ps(va, acc[i][q], _mm512_mul_ps(vb, _mm512_loadu_ps(row + 16 * q)));
      _mm512_storeu_ps(row + 16 * q, r);
    }
  }
}

// dst [ceil(mc / 6)][kc][6] <- A[i0 .. i0 + mc, p0 .. p0 + kc), rows past mc zero.
void pack_a(const SgemmParams& g, int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* __restrict__ dst) {
  for (int64_t ir = 0; ir < mc; ir += kMr) {
    const int rows = static_cast<int>(std::min<int64_t>(kMr, mc - ir));
    for (int i = 0; i < kMr; ++i) {
      if (i >= rows) {
        for (int64_t p = 0; p < kc; ++p) dst[p * kMr + i] = 0.0f;
        continue;
      }
      const float* src = g.a + (i0 + ir + i) * g.a_rs + p0 * g.a_cs;
      for (int64_t p = 0; p < kc; ++p) dst[p * kMr + i] = src[p * g.a_cs];
    }
    dst += kc * kMr;
  }
}

// Panel jp of the B block: dst [kc][64] <- B[p0 .. p0 + kc, j0 .. j0 + 64), columns past n zero.
void pack_b_panel(const SgemmParams& g, int64_t p0, int64_t kc, int64_t j0, float* __restrict__ dst) {
  const int cols = static_cast<int>(std::min<int64_t>(kNr, g.n - j0));
  if (g.b_cs == 1) {  // rows of B contiguous: copy 64-float rows
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = g.b + (p0 + p) * g.b_rs + j0;
      std::memcpy(dst + p * kNr, src, sizeof(float) * cols);
      std::fill(dst + p * kNr + cols, dst + (p + 1) * kNr, 0.0f);
    }
    return;
  }
  for (int j = 0; j < kNr; ++j) {  // columns of B contiguous (a transposed weight): read columns, scatter
    if (j >= cols) {
      for (int64_t p = 0; p < kc; ++p) dst[p * kNr + j] = 0.0f;
      continue;
    }
    const float* src = g.b + p0 * g.b_rs + (j0 + j) * g.b_cs;
    for (int64_t p = 0; p < kc; ++p) dst[p * kNr + j] = src[p * g.b_rs];
  }
}

// Per-thread packed-A buffer, grown on demand and reused across calls (no allocation in the steady state).
float* a_buffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// Runs task(t) for t in [0, tasks) on the intra-op threads, each thread taking the next task from a shared counter:
// a thread that the OS preempts (the machine is shared) delays only the tasks it holds, not a static share of the
// work. Which thread runs a task does not change its result.
template <typename Task>
void run_tasks(int64_t tasks, bool parallel, const Task& task) {
  std::atomic<int64_t> next{0};
  const int64_t workers = parallel ? std::min<int64_t>(num_threads(), tasks) : 1;
  parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) task(t);
  });
}

void sgemm_avx512(const SgemmParams& g) {
  const int64_t panels = (g.n + kNr - 1) / kNr;
  const int64_t k_blocks = (g.k + kKc - 1) / kKc;
  const auto kc_of = [&](int64_t pb) { return std::min(kKc, g.k - pb * kKc); };
  // All of B packed once: panel (pb, jp) = B[pb kKc .., jp 64 ..] as [kc][64] at offset (pb * panels + jp) kKc 64.
  std::vector<float> b_packed(static_cast<size_t>(k_blocks * panels * kKc * kNr));
  const auto b_panel = [&](int64_t pb, int64_t jp) { return b_packed.data() + (pb * panels + jp) * kKc * kNr; };
  const bool parallel = 2.0 * static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k) >=
                        kParallelFlops;
  run_tasks(k_blocks * panels, parallel, [&](int64_t t) {
    const int64_t pb = t / panels;
    const int64_t jp = t % panels;
    pack_b_panel(g, pb * kKc, kc_of(pb), jp * kNr, b_panel(pb, jp));
  });

  // Tasks: row blocks x groups of panels (groups only when the row blocks alone cannot keep the threads busy).
  // A task owns its C tile for the whole k loop, so every C element is computed in one fixed order.
  const int64_t row_blocks = (g.m + kMc - 1) / kMc;
  const int64_t group = row_blocks >= 2 * num_threads() ? panels : std::min(panels, kGroupPanels);
  const int64_t groups = (panels + group - 1) / group;
  run_tasks(row_blocks * groups, parallel, [&](int64_t t) {
    const int64_t i0 = (t / groups) * kMc;
    const int64_t mc = std::min(kMc, g.m - i0);
    const int64_t jp_end = std::min(panels, (t % groups + 1) * group);
    float* a_block = a_buffer(kKc * kMc);
    alignas(64) float edge[kMr * kNr];
    for (int64_t pb = 0; pb < k_blocks; ++pb) {
      const int64_t kc = kc_of(pb);
      const float beta = pb == 0 ? g.beta : 1.0f;
      pack_a(g, i0, mc, pb * kKc, kc, a_block);
      for (int64_t jp = (t % groups) * group; jp < jp_end; ++jp) {
        const int64_t j0 = jp * kNr;
        const int cols = static_cast<int>(std::min<int64_t>(kNr, g.n - j0));
        for (int64_t ir = 0; ir < mc; ir += kMr) {
          const int rows = static_cast<int>(std::min<int64_t>(kMr, mc - ir));
          const float* a_panel = a_block + ir * kc;
          float* c = g.c + (i0 + ir) * g.ldc + j0;
          if (rows == kMr && cols == kNr) {
            micro_kernel(kc, a_panel, b_panel(pb, jp), c, g.ldc, g.alpha, beta);
            continue;
          }
          micro_kernel(kc, a_panel, b_panel(pb, jp), edge, kNr, 1.0f, 0.0f);
          for (int i = 0; i < rows; ++i) {
            for (int j = 0; j < cols; ++j) {
              float& out = c[i * g.ldc + j];
              out = g.alpha * edge[i * kNr + j] + (beta == 0.0f ? 0.0f : beta * out);
            }
          }
        }
      }
    }
  });
}

bool genuine_intel() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  return std::string_view(vendor) == "GenuineIntel";
}

}  // namespace

bool sgemm_available() { return true; }

bool use_sgemm(double flops) {
  const char* mode = std::getenv("TTT_KERNELS_CPU_GEMM");
  if (mode != nullptr && std::string_view(mode) == "blas") return false;
  if (mode != nullptr && std::string_view(mode) == "native") return true;
  static const bool intel = genuine_intel();
  return !intel && flops >= kNativeMinFlops;
}

void sgemm(const SgemmParams& params) {
  if (params.m == 0 || params.n == 0 || params.batch == 0) return;
  // A batch runs its entries on the intra-op threads, one thread each: the parallel regions of an entry's GEMM run
  // inline there (nested), so a batch of small GEMMs (the fast weights of B sequences) costs one parallel region.
  const double flops = 2.0 * static_cast<double>(params.m) * static_cast<double>(params.n) *
                       static_cast<double>(params.k) * static_cast<double>(params.batch);
  run_tasks(params.batch, params.batch > 1 && flops >= kParallelFlops, [&](int64_t z) {
    SgemmParams g = params;
    g.a += z * params.a_bs;
    g.b += z * params.b_bs;
    g.c += z * params.c_bs;
    if (g.k > 0) return sgemm_avx512(g);
    for (int64_t i = 0; i < g.m; ++i) {
      float* row = g.c + i * g.ldc;
      for (int64_t j = 0; j < g.n; ++j) row[j] = g.beta == 0.0f ? 0.0f : g.beta * row[j];
    }
  });
}

#else

bool sgemm_available() { return false; }
bool use_sgemm(double) { return false; }
void sgemm(const SgemmParams&) {
  throw std::runtime_error("ttt::cpu::sgemm: built without AVX-512 (TTT_KERNELS_NATIVE on an AVX-512 machine)");
}

#endif

}  // namespace ttt::cpu
