// ttt::cuda::mlp_gemm: the one entry point of every CUTLASS GEMM of the dynamic MLP (params: ttt_kernels/gemm.h),
// and pack_rows, the hand-written kernel that packs weights into its 16-bit operands.
//
// check_mlp_gemm validates a GemmParams and mlp_gemm dispatches it to the CUTLASS instantiation for its (epilogue,
// dtype, layouts) (csrc/cuda/gemm_cutlass.cuh); the simulator build runs the same CUTLASS kernels.
// pack_rows copies (and converts) weight rows into the 16-bit GEMM operands: [w1; w3] row-interleaved for the
// up-projection, stacked for dx, w2 on its own. One block per destination row, threads across its columns; it runs in
// the simulator too.
#include "ttt_kernels/device/runtime.h"
#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/gemm.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "elementwise.cuh"
#include "gemm_kernels.h"

namespace ttt::TTT_CUDA_NS {
namespace {

// ---- pack_rows ----------------------------------------------------------------------------------------------------

// dst[z, r, :] = convert(src[g][z, i, :]) for the destination rows z * groups * src_rows + r = blockIdx.x (+ k *
// gridDim.x), with (g, i) = (r % groups, r / groups) when interleaving, (r / src_rows, r % src_rows) when stacking.
template <typename Src, typename Dst>
__global__ void __launch_bounds__(kThreads) pack_rows_kernel(const PackRowsParams p) {
  const int64_t per_batch = p.groups * p.src_rows;
  for (int64_t row = blockIdx.x; row < p.batch * per_batch; row += gridDim.x) {
    const int64_t z = row / per_batch;
    const int64_t r = row % per_batch;
    const int64_t g = p.interleave ? r % p.groups : r / p.src_rows;
    const int64_t i = z * p.src_rows + (p.interleave ? r / p.groups : r % p.src_rows);
    // A select, not p.src[g]: indexing the parameter array with a runtime index would copy it to local memory.
    const Src* __restrict__ src = static_cast<const Src*>(g == 0 ? p.src[0] : p.src[1]) + i * p.cols;
    Dst* __restrict__ dst = static_cast<Dst*>(p.dst) + row * p.cols;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) dst[c] = Num<Dst>::store(Num<Src>::load(src[c]));
  }
}

// ---- mlp_gemm -----------------------------------------------------------------------------------------------------

const char* epilogue_name(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::kStore:
      return "store";
    case GemmEpilogue::kSwiglu:
      return "swiglu";
    case GemmEpilogue::kAccumulate:
      return "accumulate";
  }
  return "unknown epilogue";
}

const char* layout_name(GemmLayout l) { return l == GemmLayout::kRowMajor ? "row-major" : "column-major"; }

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// 16-byte accesses: elements per access of a 16-bit operand and of a float32 output.
constexpr int64_t kVec16 = 8;
constexpr int64_t kVec32 = 4;

}  // namespace

void pack_rows(const PackRowsParams& p, void* stream) {
  if (p.groups != 1 && p.groups != 2) {
    throw std::invalid_argument("pack_rows: groups must be 1 or 2, got " + std::to_string(p.groups));
  }
  const int64_t rows = p.batch * p.groups * p.src_rows;
  if (rows == 0 || p.cols == 0) return;
  if (p.dst_dtype != DType::kBFloat16 && p.dst_dtype != DType::kFloat16) {
    throw std::invalid_argument("pack_rows: the destination must be bfloat16 or float16");
  }
  // The operands the MLP packs: 16-bit activations and weights (same dtype) or float32 (fast) weights.
  if (p.src_dtype != p.dst_dtype && p.src_dtype != DType::kFloat32) {
    throw std::invalid_argument("pack_rows: the source must have the destination's dtype or be float32");
  }
  const dim3 grid(static_cast<unsigned>(std::min(rows, kMaxBlocks)));
  const bool from_float = p.src_dtype == DType::kFloat32;
  if (p.dst_dtype == DType::kBFloat16) {
    launch(from_float ? pack_rows_kernel<float, __nv_bfloat16> : pack_rows_kernel<__nv_bfloat16, __nv_bfloat16>, grid,
           dim3(kThreads), 0, stream, p);
  } else {
    launch(from_float ? pack_rows_kernel<float, __half> : pack_rows_kernel<__half, __half>, grid, dim3(kThreads), 0,
           stream, p);
  }
}

void check_mlp_gemm(const GemmParams& p) {
  const std::string where = std::string("mlp_gemm(") + epilogue_name(p.epilogue) + "): ";
  const auto fail = [&](const std::string& what) { throw std::invalid_argument(where + what); };
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16) {
    fail("A and B must be bfloat16 or float16 (tensor-core GEMMs), got dtype enum value " +
         std::to_string(static_cast<int>(p.dtype)));
  }
  for (const auto& [name, v] : {std::pair{"m", p.m}, std::pair{"n", p.n}, std::pair{"k", p.k}}) {
    if (v < 1 || v > INT_MAX) fail(std::string(name) + " must be in [1, 2^31), got " + std::to_string(v));
  }
  // The batch is the grid's z dimension.
  if (p.batch < 1 || p.batch > 65535) fail("batch must be in [1, 65535], got " + std::to_string(p.batch));
  // Supported (A, B) layouts per epilogue: the MLP's GEMMs, each one CUTLASS instantiation per dtype.
  const bool a_row = p.a.layout == GemmLayout::kRowMajor;
  const bool b_row = p.b.layout == GemmLayout::kRowMajor;
  const bool supported = (p.epilogue == GemmEpilogue::kSwiglu && a_row && !b_row) ||
                         (p.epilogue == GemmEpilogue::kStore && a_row) ||
                         (p.epilogue == GemmEpilogue::kAccumulate && !a_row && b_row);
  if (!supported) {
    fail(std::string("unsupported operand layouts: A ") + layout_name(p.a.layout) + ", B " +
         layout_name(p.b.layout) + " (supported: swiglu A row-major, B column-major; store A row-major; "
         "accumulate A column-major, B row-major)");
  }
  // An operand [rows, cols] with unit stride along its contiguous extent: 16-byte aligned base, leading dimension a
  // multiple of the access width and at least the contiguous extent, which must itself be a multiple of the access
  // width (CUTLASS predicates whole 16-byte accesses).
  // Batched: every problem's base is aligned like the first, so batch strides are multiples of the access width.
  const auto check_operand = [&](const char* name, const void* ptr, int64_t ld, bool row_major, int64_t rows,
                                 int64_t cols, int64_t vec, int64_t batch_stride) {
    const int64_t contiguous = row_major ? cols : rows;
    const std::string shape = std::string(name) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] " +
                              (row_major ? "row-major" : "column-major");
    if (ptr == nullptr) fail(shape + ": null pointer");
    if (!aligned16(ptr)) fail(shape + ": the base address must be 16-byte aligned");
    if (contiguous % vec != 0) {
      fail(shape + ": its contiguous extent " + std::to_string(contiguous) + " must be a multiple of " +
           std::to_string(vec) + " elements");
    }
    if (ld < contiguous || ld % vec != 0 || ld > INT_MAX) {
      fail(shape + ": leading dimension " + std::to_string(ld) + " must be >= " + std::to_string(contiguous) +
           ", a multiple of " + std::to_string(vec) + " and < 2^31");
    }
    if (p.batch > 1 && (batch_stride < 0 || batch_stride % vec != 0)) {
      fail(shape + ": batch stride " + std::to_string(batch_stride) + " must be >= 0 and a multiple of " +
           std::to_string(vec));
    }
  };
  check_operand("A", p.a.ptr, p.a.ld, a_row, p.m, p.k, kVec16, p.a.batch_stride);
  check_operand("B", p.b.ptr, p.b.ld, b_row, p.k, p.n, kVec16, p.b.batch_stride);
  if (p.epilogue == GemmEpilogue::kAccumulate) {
    check_operand("D", p.d, p.ldd, true, p.m, p.n, kVec32, p.batch_stride_d);
    if (p.beta != 0.0f) check_operand("C", p.c, p.ldc, true, p.m, p.n, kVec32, p.batch_stride_c);
  } else {
    check_operand("D", p.d, p.ldd, true, p.m, p.n, kVec16, p.batch_stride_d);
  }
  if (p.epilogue == GemmEpilogue::kSwiglu) {
    // T: kVec16 / 2 gate outputs per 16-byte D access -> 8-byte accesses of T.
    check_operand("T", p.t, p.ldt, true, p.m, p.n / 2, kVec16 / 2, p.batch_stride_t);
  }
}

void mlp_gemm(const GemmParams& p, void* stream) {
  check_mlp_gemm(p);
  const bool bf16 = p.dtype == DType::kBFloat16;
  switch (p.epilogue) {
    case GemmEpilogue::kSwiglu:
      return bf16 ? mlp_cutlass::swiglu_rc<__nv_bfloat16>(p, stream) : mlp_cutlass::swiglu_rc<__half>(p, stream);
    case GemmEpilogue::kStore:
      if (p.b.layout == GemmLayout::kRowMajor) {
        return bf16 ? mlp_cutlass::store_r<__nv_bfloat16, true>(p, stream)
                    : mlp_cutlass::store_r<__half, true>(p, stream);
      }
      return bf16 ? mlp_cutlass::store_r<__nv_bfloat16, false>(p, stream)
                  : mlp_cutlass::store_r<__half, false>(p, stream);
    case GemmEpilogue::kAccumulate:
      return bf16 ? mlp_cutlass::accumulate_cr<__nv_bfloat16>(p, stream)
                  : mlp_cutlass::accumulate_cr<__half>(p, stream);
  }
}

}  // namespace ttt::TTT_CUDA_NS
