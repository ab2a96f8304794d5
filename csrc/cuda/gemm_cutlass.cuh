// CUTLASS 2.x GEMMs of the dynamic MLP (declared in gemm_kernels.h) and their epilogue functors. Included only by
// the per-element-type translation units gemm_bf16.cu and gemm_fp16.cu, which nvcc compiles for the GPU and the host
// compiler for the CUDA simulator (TTT_SIM: through cutlass_sim.h, docs/simulator.md "CUTLASS in the simulator").
//
// All kernels: sm80 tensor-op mainloop (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate; runs on sm_90a too),
// threadblock tile 128 x 128 x 32, four 64 x 64 warps, 3 cp.async stages (48 KiB of shared memory), 16-byte
// (8-element) operand and output accesses. The tensor-core instruction is arch.h's (operator tag ArchMmaOp below),
// so that both builds execute the same wrapper.
//
// - kSwiglu uses the GemmWithFusedEpilogue kernel (CUTLASS's GEMM with broadcast), the epilogue of which stores two
//   tensors per accumulator tile: Z (here the pre-activations h, dtype) and T. T is declared as a uint8_t matrix of
//   the accumulator's shape [m, n]: the functor sees kCount = 8 consecutive accumulators (4 interleaved (h1, h3)
//   pairs, the access starting at a multiple of 8 columns) and writes the 4 gate outputs a as 16-bit values into the
//   8 bytes of its T access. Row i of the byte matrix (ldt bytes) is thus row i of a [m, n / 2] 16-bit matrix with
//   row stride ldt / 2 elements. The broadcast vector is unused (nullptr: CUTLASS then reads nothing).
// - kStore is the stock LinearCombination with ScaleType::Nothing (D = accumulator, converted).
// - kAccumulate is AccumulateEpilogue: D = beta C + alpha * (*scale) * accumulator in float32; *scale is read on the
//   device, so the SGD step computed by the clip kernels never goes through the host.
// Every kernel runs in GemmUniversalMode::kBatched: GemmParams::batch problems in one launch (grid z), each operand
// of problem z at its base + z * its batch stride (the fast weights of B sequences; batch 1 is one plain GEMM).
// The kernel-level CUTLASS types are launched by ttt::launch (device/launch.h) through gemm_kernel below, like every
// kernel of the project, rather than by CUTLASS's device-level operators.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "gemm_kernels.h"
#include "ttt_kernels/device/arch.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/swiglu_math.h"

#if defined(TTT_SIM)
// The simulator's copies of CUTLASS's inline functions stay inside its library: the CUDA library holds nvcc's host
// copies of some of them under the same symbol names (the host code paths, e.g. a warp index of 0), which must not
// interpose on these.
#pragma GCC visibility push(hidden)
// GCC's -Warray-bounds flags CUTLASS's packed-array element references (cutlass/array_subbyte.h reads a 16-bit
// element through a 32-bit storage word); nvcc's host compiler never sees that device code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#include "cutlass_sim.h"  // first: it replaces CUTLASS's PTX wrappers before any CUTLASS header defines them
#endif

#include <cutlass/arch/mma.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/fast_math.h>
#include <cutlass/gemm/kernel/default_gemm_universal.h>
#include <cutlass/gemm/kernel/default_gemm_with_broadcast.h>
#include <cutlass/numeric_conversion.h>

namespace ttt::gemm_cutlass {
// The operator tag of the GEMMs' warp-level MMAs: CUTLASS's DefaultMmaTensorOp builds arch::Mma<16x8x16, ...,
// ArchMmaOp>, defined below on device/arch.h's mma_m16n8k16 (CUTLASS's own OpMultiplyAdd specialization is inline
// PTX, which the simulator cannot run).
struct ArchMmaOp {};
}  // namespace ttt::gemm_cutlass

namespace cutlass::arch {

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 for one warp: CUTLASS's fragments are the PTX
// fragments (A: 4 registers of 2 elements, B: 2, C and D: 4 floats), as in arch.h.
template <typename Element>
struct Mma<gemm::GemmShape<16, 8, 16>, 32, Element, layout::RowMajor, Element, layout::ColumnMajor, float,
           layout::RowMajor, ttt::gemm_cutlass::ArchMmaOp> {
  static_assert(std::is_same_v<Element, bfloat16_t> || std::is_same_v<Element, half_t>,
                "ArchMmaOp: bfloat16 or float16 operands");
  using Shape = gemm::GemmShape<16, 8, 16>;
  using ElementA = Element;
  using LayoutA = layout::RowMajor;
  using FragmentA = Array<Element, 8>;
  using ElementB = Element;
  using LayoutB = layout::ColumnMajor;
  using FragmentB = Array<Element, 4>;
  using ElementC = float;
  using LayoutC = layout::RowMajor;
  using FragmentC = Array<float, 4>;
  using Operator = ttt::gemm_cutlass::ArchMmaOp;
  using ArchTag = arch::Sm80;
  using ArchElement = std::conditional_t<std::is_same_v<Element, bfloat16_t>, __nv_bfloat16, __half>;

  CUTLASS_DEVICE void operator()(FragmentC& d, FragmentA const& a, FragmentB const& b, FragmentC const& c) const {
    static_assert(sizeof(FragmentA) == 16 && sizeof(FragmentB) == 8 && sizeof(FragmentC) == 16,
                  "the CUTLASS fragments are the PTX fragments");
    uint32_t ra[4];
    uint32_t rb[2];
    float rc[4];
    float rd[4];
    std::memcpy(ra, &a, sizeof ra);
    std::memcpy(rb, &b, sizeof rb);
    std::memcpy(rc, &c, sizeof rc);
    ttt::arch::mma_m16n8k16<ArchElement>(rd, ra, rb, rc);
    std::memcpy(&d, rd, sizeof rd);
  }
};

}  // namespace cutlass::arch

namespace ttt::TTT_CUDA_NS::mlp_cutlass {

template <typename Element>
struct CutlassElement;
template <>
struct CutlassElement<__nv_bfloat16> {
  using type = cutlass::bfloat16_t;
};
template <>
struct CutlassElement<__half> {
  using type = cutlass::half_t;
};

// Z = accumulators (the pre-activations h), T = silu(h1) * h3 of each interleaved pair, packed as 16-bit values into
// the uint8_t T fragment (see the file comment). The concept is CUTLASS's EpilogueWithBroadcastOp.
template <typename Element>
struct SwigluEpilogue {
  static int const kCount = 8;
  static int const kElementsPerAccess = kCount;
  static bool const kIsSingleSource = true;
  static bool const kStoreZ = true;
  static bool const kStoreT = true;
  using ElementOutput = Element;
  using ElementC = Element;
  using ElementAccumulator = float;
  using ElementCompute = float;
  using ElementZ = Element;
  using ElementT = uint8_t;
  using ElementVector = Element;
  using FragmentAccumulator = cutlass::Array<float, kCount>;
  using FragmentCompute = cutlass::Array<float, kCount>;
  using FragmentC = cutlass::Array<Element, kCount>;
  using FragmentZ = cutlass::Array<Element, kCount>;
  using FragmentT = cutlass::Array<uint8_t, kCount>;
  static_assert(sizeof(Element) == 2 && kCount % 2 == 0, "the gate outputs are 16-bit halves of the T fragment");

  struct Params {};

  CUTLASS_HOST_DEVICE explicit SwigluEpilogue(Params const&) {}
  CUTLASS_HOST_DEVICE bool is_source_needed() const { return false; }
  CUTLASS_HOST_DEVICE void set_k_partition(int, int) {}

  CUTLASS_HOST_DEVICE void operator()(FragmentZ& z, FragmentT& t, FragmentAccumulator const& ab,
                                      FragmentCompute const& /*broadcast*/) const {
    z = cutlass::NumericArrayConverter<Element, float, kCount>()(ab);
    Element a[kCount / 2];
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kCount / 2; ++i) {
      const float h1 = ab[2 * i];
      const float s = 1.0f / (1.0f + cutlass::fast_exp(-h1));
      a[i] = Element(swiglu_math::silu(h1, s) * ab[2 * i + 1]);
    }
    static_assert(sizeof(a) == sizeof(t), "kCount / 2 16-bit values fill the kCount-byte T fragment");
    std::memcpy(static_cast<void*>(&t), a, sizeof(t));
  }

  // With a source (never: is_source_needed() is false); required by the concept.
  CUTLASS_HOST_DEVICE void operator()(FragmentZ& z, FragmentT& t, FragmentAccumulator const& ab,
                                      FragmentC const& /*source*/, FragmentCompute const& broadcast) const {
    (*this)(z, t, ab, broadcast);
  }
};

// D = beta C + alpha * (*scale or 1) * accumulator, float32. The concept is CUTLASS's LinearCombination.
template <int kCount_>
class AccumulateEpilogue {
 public:
  static int const kCount = kCount_;
  static bool const kIsHeavy = false;
  using ElementOutput = float;
  using ElementAccumulator = float;
  using ElementCompute = float;
  using ElementC = float;
  using ElementD = float;
  using FragmentOutput = cutlass::Array<float, kCount>;
  using FragmentSource = cutlass::Array<float, kCount>;
  using FragmentAccumulator = cutlass::Array<float, kCount>;

  struct Params {
    float alpha = 1.0f;
    float beta = 0.0f;
    const float* scale = nullptr;  // device pointer, read by every thread of the epilogue
  };

  CUTLASS_HOST_DEVICE explicit AccumulateEpilogue(Params const& p)
      : alpha_(p.scale != nullptr ? p.alpha * *p.scale : p.alpha), beta_(p.beta) {}
  CUTLASS_HOST_DEVICE bool is_source_needed() const { return beta_ != 0.0f; }
  // Serial split-K is not used (kSplitKSerial is false); kept for the concept.
  CUTLASS_HOST_DEVICE void set_k_partition(int k_partition, int) {
    if (k_partition != 0) beta_ = 1.0f;
  }

  CUTLASS_HOST_DEVICE FragmentOutput operator()(FragmentAccumulator const& acc, FragmentSource const& c) const {
    FragmentOutput d;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kCount; ++i) d[i] = beta_ * c[i] + alpha_ * acc[i];
    return d;
  }

  CUTLASS_HOST_DEVICE FragmentOutput operator()(FragmentAccumulator const& acc) const {
    FragmentOutput d;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kCount; ++i) d[i] = alpha_ * acc[i];
    return d;
  }

 private:
  float alpha_;
  float beta_;
};

using ThreadblockShape = cutlass::gemm::GemmShape<128, 128, 32>;
using WarpShape = cutlass::gemm::GemmShape<64, 64, 32>;
using InstructionShape = cutlass::gemm::GemmShape<16, 8, 16>;
using Swizzle = cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>;
constexpr int kStages = 3;
constexpr int kAlignment = 8;  // elements of A and B per access (16 bytes)

template <bool kRowMajor>
using Layout = std::conditional_t<kRowMajor, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor>;

// The kernel-level GEMM D [m, n] (ElementD, row-major) = epilogue(A [m, k] B [k, n]) with the tile configuration
// above.
template <typename Element, typename LayoutA, typename LayoutB, typename ElementD, typename Epilogue>
using UniversalKernel = typename cutlass::gemm::kernel::DefaultGemmUniversal<
    Element, LayoutA, cutlass::ComplexTransform::kNone, kAlignment, Element, LayoutB, cutlass::ComplexTransform::kNone,
    kAlignment, ElementD, cutlass::layout::RowMajor, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    ThreadblockShape, WarpShape, InstructionShape, Epilogue, Swizzle, kStages,
    ttt::gemm_cutlass::ArchMmaOp>::GemmKernel;

// The GEMMs, each a short name for its CUTLASS kernel type (Kernel), which names the __global__ function below:
// gemm_kernel<SwigluGemm<__nv_bfloat16>> reads better in messages and reports than the kernel type's ~1,600
// characters, which c++filt cannot demangle.

// kSwiglu: A row-major, B column-major, D and T (see the file comment).
template <typename Element>
struct SwigluGemm {
  using E = typename CutlassElement<Element>::type;
  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithBroadcast<
      E, cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone, kAlignment, E, cutlass::layout::ColumnMajor,
      cutlass::ComplexTransform::kNone, kAlignment, E, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape, WarpShape, InstructionShape,
      SwigluEpilogue<E>, Swizzle, kStages, ttt::gemm_cutlass::ArchMmaOp>::GemmKernel;
};

// kStore: A row-major, B row-major (kBRowMajor) or column-major.
template <typename Element, bool kBRowMajor>
struct StoreGemm {
  using E = typename CutlassElement<Element>::type;
  using Epilogue = cutlass::epilogue::thread::LinearCombination<E, kAlignment, float, float,
                                                                cutlass::epilogue::thread::ScaleType::Nothing>;
  using Kernel = UniversalKernel<E, cutlass::layout::RowMajor, Layout<kBRowMajor>, E, Epilogue>;
};

// kAccumulate: A column-major, B row-major, D (and C) float32.
template <typename Element>
struct AccumulateGemm {
  using E = typename CutlassElement<Element>::type;
  using Epilogue = AccumulateEpilogue<4>;  // 16-byte float32 accesses
  using Kernel = UniversalKernel<E, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor, float, Epilogue>;
};

namespace {

// One CUTLASS kernel-level GEMM per block: its shared storage is the block's dynamic shared memory.
template <typename Gemm>
__global__ void __launch_bounds__(Gemm::Kernel::kThreadCount)
    gemm_kernel(const typename Gemm::Kernel::Params params) {
  Gemm::Kernel::invoke(params, *ttt::dynamic_smem<typename Gemm::Kernel::SharedStorage>());
}

}  // namespace

[[noreturn]] inline void fail(const char* kernel, const char* step, cutlass::Status status) {
  throw std::runtime_error(std::string("mlp_gemm(") + kernel + "): " + step + " failed: " +
                           cutlassGetStatusString(status));
}

inline cutlass::gemm::GemmCoord problem_size(const GemmParams& p) {
  return {static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k)};
}

// Checks a GEMM's arguments (can_implement), builds its params and launches it: one block per output tile and batch
// entry (the swizzle's grid), no workspace (no split-K).
template <typename Gemm>
void run(const char* kernel, const typename Gemm::Kernel::Arguments& args, void* stream) {
  using Kernel = typename Gemm::Kernel;
  const cutlass::Status status = Kernel::can_implement(args);
  if (status != cutlass::Status::kSuccess) fail(kernel, "can_implement", status);
  // The SM count and occupancy only serve stream-K swizzles.
  const typename Kernel::Params params(args, /*device_sms=*/0, /*sm_occupancy=*/0);
  if (params.get_workspace_size() != 0) {
    throw std::runtime_error(std::string("mlp_gemm(") + kernel + "): unexpected workspace requirement");
  }
  ttt::launch(gemm_kernel<Gemm>, params.get_grid_dims(), dim3(Kernel::kThreadCount),
              sizeof(typename Kernel::SharedStorage), stream, params);
}

template <typename Element>
void swiglu_rc(const GemmParams& p, void* stream) {
  using Gemm = SwigluGemm<Element>;
  // T is addressed as bytes: its leading dimension and batch stride in bytes are twice the 16-bit ones.
  const typename Gemm::Kernel::Arguments args(
      cutlass::gemm::GemmUniversalMode::kBatched, problem_size(p), static_cast<int>(p.batch), {}, p.a.ptr, p.b.ptr,
      /*ptr_C=*/nullptr, p.d, /*ptr_Vector=*/nullptr, p.t, p.a.batch_stride, p.b.batch_stride,
      /*batch_stride_C=*/0, p.batch_stride_d, /*batch_stride_Vector=*/0, 2 * p.batch_stride_t, p.a.ld, p.b.ld,
      /*ldc=*/0, p.ldd, /*ldr=*/0, 2 * p.ldt);
  run<Gemm>("swiglu", args, stream);
}

template <typename Element, bool kBRowMajor>
void store_r(const GemmParams& p, void* stream) {
  using Gemm = StoreGemm<Element, kBRowMajor>;
  // C is never read (ScaleType::Nothing); D stands in for it.
  const typename Gemm::Kernel::Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, problem_size(p),
                                              static_cast<int>(p.batch), {}, p.a.ptr, p.b.ptr, p.d, p.d,
                                              p.a.batch_stride, p.b.batch_stride, p.batch_stride_d, p.batch_stride_d,
                                              p.a.ld, p.b.ld, p.ldd, p.ldd);
  run<Gemm>(kBRowMajor ? "store, B row-major" : "store, B column-major", args, stream);
}

template <typename Element>
void accumulate_cr(const GemmParams& p, void* stream) {
  using Gemm = AccumulateGemm<Element>;
  // C is read only when beta != 0; D stands in for it otherwise (never dereferenced).
  const bool read_c = p.beta != 0.0f;
  const typename Gemm::Kernel::Arguments args(
      cutlass::gemm::GemmUniversalMode::kBatched, problem_size(p), static_cast<int>(p.batch),
      typename Gemm::Epilogue::Params{p.alpha, p.beta, p.scale}, p.a.ptr, p.b.ptr, read_c ? p.c : p.d, p.d,
      p.a.batch_stride, p.b.batch_stride, read_c ? p.batch_stride_c : p.batch_stride_d, p.batch_stride_d, p.a.ld,
      p.b.ld, read_c ? p.ldc : p.ldd, p.ldd);
  run<Gemm>("accumulate", args, stream);
}

}  // namespace ttt::TTT_CUDA_NS::mlp_cutlass

#if defined(TTT_SIM)
#pragma GCC diagnostic pop
#pragma GCC visibility pop
#endif
