// CUTLASS 2.x device-level GEMMs of the dynamic MLP (declared in gemm_kernels.h) and their epilogue functors.
// Included only by the per-element-type translation units gemm_bf16.cu and gemm_fp16.cu, under nvcc.
//
// All kernels: sm80 tensor-op mainloop (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate; runs on sm_90a too),
// threadblock tile 128 x 128 x 32, four 64 x 64 warps, 3 cp.async stages (48 KiB of shared memory), 16-byte
// (8-element) operand and output accesses.
//
// - kSwiglu uses GemmUniversalWithBroadcast, the epilogue of which stores two tensors per accumulator tile: Z (here
//   the pre-activations h, dtype) and T. T is declared as a uint8_t matrix of the accumulator's shape [m, n]: the
//   functor sees kCount = 8 consecutive accumulators (4 interleaved (h1, h3) pairs, the access starting at a
//   multiple of 8 columns) and writes the 4 gate outputs a as 16-bit values into the 8 bytes of its T access. Row i
//   of the byte matrix (ldt bytes) is thus row i of a [m, n / 2] 16-bit matrix with row stride ldt / 2 elements.
//   The broadcast vector is unused (nullptr: CUTLASS then reads nothing).
// - kStore is the stock LinearCombination with ScaleType::Nothing (D = accumulator, converted).
// Every kernel runs in GemmUniversalMode::kBatched: GemmParams::batch problems in one launch (grid z), each operand
// of problem z at its base + z * its batch stride (the fast weights of B sequences; batch 1 is one plain GEMM).
// - kAccumulate is AccumulateEpilogue: D = beta C + alpha * (*scale) * accumulator in float32; *scale is read on the
//   device, so the SGD step computed by the clip kernels never goes through the host.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/fast_math.h>
#include <cutlass/gemm/device/gemm_universal.h>
#include <cutlass/gemm/device/gemm_universal_with_broadcast.h>
#include <cutlass/numeric_conversion.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gemm_kernels.h"
#include "ttt_kernels/swiglu_math.h"

namespace ttt::cuda::mlp_cutlass {

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
    cutlass::Array<Element, kCount / 2> a;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kCount / 2; ++i) {
      const float h1 = ab[2 * i];
      const float s = 1.0f / (1.0f + cutlass::fast_exp(-h1));
      a[i] = Element(swiglu_math::silu(h1, s) * ab[2 * i + 1]);
    }
    static_assert(sizeof(a) == sizeof(t), "kCount / 2 16-bit values fill the kCount-byte T fragment");
    std::memcpy(&t, &a, sizeof(t));
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
constexpr int kStages = 3;
constexpr int kAlignment = 8;  // elements of A and B per access (16 bytes)

template <bool kRowMajor>
using Layout = std::conditional_t<kRowMajor, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor>;

[[noreturn]] inline void fail(const char* kernel, const char* step, cutlass::Status status) {
  throw std::runtime_error(std::string("mlp_gemm(") + kernel + "): " + step + " failed: " +
                           cutlassGetStatusString(status));
}

inline cutlass::gemm::GemmCoord problem_size(const GemmParams& p) {
  return {static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k)};
}

// can_implement, initialize and run of a device-level CUTLASS operator (no workspace: no split-K).
template <typename Op>
void run(const char* kernel, const typename Op::Arguments& args, void* stream) {
  Op op;
  cutlass::Status status = op.can_implement(args);
  if (status != cutlass::Status::kSuccess) fail(kernel, "can_implement", status);
  if (Op::get_workspace_size(args) != 0) {
    throw std::runtime_error(std::string("mlp_gemm(") + kernel + "): unexpected workspace requirement");
  }
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  status = op.initialize(args, nullptr, cuda_stream);
  if (status != cutlass::Status::kSuccess) fail(kernel, "initialize", status);
  status = op.run(cuda_stream);
  if (status != cutlass::Status::kSuccess) fail(kernel, "run", status);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("mlp_gemm(") + kernel + "): kernel launch: " + cudaGetErrorString(err));
  }
}

template <typename Element>
void swiglu_rc(const GemmParams& p, void* stream) {
  using E = typename CutlassElement<Element>::type;
  using Op = cutlass::gemm::device::GemmUniversalWithBroadcast<
      E, cutlass::layout::RowMajor, E, cutlass::layout::ColumnMajor, E, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape, WarpShape, InstructionShape,
      SwigluEpilogue<E>, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, kStages, kAlignment,
      kAlignment>;
  // T is addressed as bytes: its leading dimension and batch stride in bytes are twice the 16-bit ones.
  const typename Op::Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, problem_size(p),
                                    static_cast<int>(p.batch), {}, p.a.ptr, p.b.ptr, /*ptr_C=*/nullptr, p.d,
                                    /*ptr_Vector=*/nullptr, p.t, p.a.batch_stride, p.b.batch_stride,
                                    /*batch_stride_C=*/0, p.batch_stride_d, /*batch_stride_Vector=*/0,
                                    2 * p.batch_stride_t, p.a.ld, p.b.ld, /*ldc=*/0, p.ldd, /*ldr=*/0, 2 * p.ldt);
  run<Op>("swiglu", args, stream);
}

template <typename Element, bool kBRowMajor>
void store_r(const GemmParams& p, void* stream) {
  using E = typename CutlassElement<Element>::type;
  using Epilogue = cutlass::epilogue::thread::LinearCombination<E, kAlignment, float, float,
                                                                cutlass::epilogue::thread::ScaleType::Nothing>;
  using Op = cutlass::gemm::device::GemmUniversal<
      E, cutlass::layout::RowMajor, E, Layout<kBRowMajor>, E, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape, WarpShape, InstructionShape, Epilogue,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, kStages, kAlignment, kAlignment>;
  // C is never read (ScaleType::Nothing); D stands in for it.
  const typename Op::Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, problem_size(p),
                                    static_cast<int>(p.batch), {}, p.a.ptr, p.b.ptr, p.d, p.d, p.a.batch_stride,
                                    p.b.batch_stride, p.batch_stride_d, p.batch_stride_d, p.a.ld, p.b.ld, p.ldd,
                                    p.ldd);
  run<Op>(kBRowMajor ? "store, B row-major" : "store, B column-major", args, stream);
}

template <typename Element>
void accumulate_cr(const GemmParams& p, void* stream) {
  using E = typename CutlassElement<Element>::type;
  using Epilogue = AccumulateEpilogue<4>;  // 16-byte float32 accesses
  using Op = cutlass::gemm::device::GemmUniversal<
      E, cutlass::layout::ColumnMajor, E, cutlass::layout::RowMajor, float, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape, WarpShape, InstructionShape, Epilogue,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, kStages, kAlignment, kAlignment>;
  // C is read only when beta != 0; D stands in for it otherwise (never dereferenced).
  const bool read_c = p.beta != 0.0f;
  const typename Op::Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, problem_size(p),
                                    static_cast<int>(p.batch), typename Epilogue::Params{p.alpha, p.beta, p.scale},
                                    p.a.ptr, p.b.ptr, read_c ? p.c : p.d, p.d, p.a.batch_stride, p.b.batch_stride,
                                    read_c ? p.batch_stride_c : p.batch_stride_d, p.batch_stride_d, p.a.ld, p.b.ld,
                                    read_c ? p.ldc : p.ldd, p.ldd);
  run<Op>("accumulate", args, stream);
}

}  // namespace ttt::cuda::mlp_cutlass
