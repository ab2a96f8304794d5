// Torch glue shared by the ops built on the GEMM wrapper and the CPU GEMMs (csrc/ops/gemm.cpp: sgd_gemm_update_,
// _mlp_gemm; csrc/ops/swiglu.cpp: the SwiGLU MLP): dtype helpers, the CPU GEMMs (the AVX-512 sgemm or BLAS), and for
// the CUDA implementation (on a GPU, or in the simulator on CPU tensors) the backends, GEMM operands from tensor views
// and the packing of weights into 16-bit GEMM operands (params: include/ttt_kernels/gemm.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "ttt_kernels/gemm.h"

namespace ttt::gemm_glue {

using OptTensor = std::optional<at::Tensor>;

// Dtypes reaching the kernels were checked against the op's schema rules already.
inline DType to_dtype(at::ScalarType t) { return ops::to_dtype("mlp", "tensor", t); }

inline bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}
inline bool is_16bit(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides(), " for shape ",
              t.sizes());
}

// out [B, m, n] = alpha a b + beta out on the CPU for batches of matrices a [B, m, k], b [B, k, n] (any strides; out
// with unit column stride): the AVX-512 sgemm (csrc/cpu/gemm.cpp) for float32 when cpu::use_sgemm(), else
// (batched) BLAS.
inline void cpu_bgemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double alpha = 1.0,
                      double beta = 0.0) {
  const double flops = 2.0 * static_cast<double>(a.size(1)) * static_cast<double>(a.size(2)) * b.size(2);
  if (out.scalar_type() == at::kFloat && cpu::use_sgemm(flops)) {
    SgemmParams g;
    g.batch = a.size(0);
    g.a_bs = a.stride(0);
    g.b_bs = b.stride(0);
    g.c_bs = out.stride(0);
    g.m = a.size(1);
    g.n = b.size(2);
    g.k = a.size(2);
    g.alpha = static_cast<float>(alpha);
    g.a = a.data_ptr<float>();
    g.a_rs = a.stride(1);
    g.a_cs = a.stride(2);
    g.b = b.data_ptr<float>();
    g.b_rs = b.stride(1);
    g.b_cs = b.stride(2);
    g.beta = static_cast<float>(beta);
    g.c = out.data_ptr<float>();
    g.ldc = out.stride(1);
    cpu::sgemm(g);
  } else if (alpha == 1.0 && beta == 0.0) {
    at::bmm_out(out, a, b);
  } else {
    out.baddbmm_(a, b, beta, alpha);
  }
}

// a b into a new [B, m, n] tensor (see cpu_bgemm).
inline at::Tensor cpu_bmm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options());
  cpu_bgemm(out, a, b);
  return out;
}

// ---- backends of the CUDA implementation --------------------------------------------------------------------------

// The GEMMs of the CUDA implementation run on a backend: the GPU (ttt::cuda, CUTLASS GEMMs) or the simulator
// (ttt::cuda_sim, CPU tensors). An op's own backend derives from these and adds its kernels.
#if defined(TTT_KERNELS_WITH_SIM)
struct SimGemm {
  static void* stream() { return nullptr; }
  static void pack_rows(const PackRowsParams& p) { cuda_sim::pack_rows(p, stream()); }
  static void gemm(const GemmParams& p) { cuda_sim::mlp_gemm(p, stream()); }
};
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
struct CudaGemm {
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  static void pack_rows(const PackRowsParams& p) { cuda::pack_rows(p, stream()); }
  static void gemm(const GemmParams& p) { cuda::mlp_gemm(p, stream()); }
};
#endif

// ---- GEMM operands --------------------------------------------------------------------------------------------------

// The batch stride of a 2-D view (one matrix: 0) or of a 3-D batch of matrices.
inline int64_t batch_stride(const at::Tensor& t) { return t.dim() == 3 ? t.stride(0) : 0; }

// A 2-D view or a 3-D batch of them as a GEMM operand: row-major when its last stride is 1, column-major when the one
// before is.
inline GemmOperand operand_of(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 || t.dim() == 3, op, ": ", name, " must be 2-D or 3-D, got shape ", t.sizes());
  if (t.stride(-1) == 1) return {t.data_ptr(), t.stride(-2), GemmLayout::kRowMajor, batch_stride(t)};
  TORCH_CHECK(t.stride(-2) == 1, op, ": ", name, " must have unit stride along one of its last two dimensions, ",
              "got strides ", t.strides());
  return {t.data_ptr(), t.stride(-1), GemmLayout::kColumnMajor, batch_stride(t)};
}

// A row-major output (D, C or T) of the GEMM wrapper: 2-D, or 3-D when batched.
inline void check_output(const char* name, const at::Tensor& t, int64_t batch) {
  TORCH_CHECK((t.dim() == 2 && batch == 1) || (t.dim() == 3 && t.size(0) == batch), "mlp_gemm: ", name,
              " must be a 2-D view or a 3-D batch of ", batch, ", got shape ", t.sizes());
  TORCH_CHECK(t.stride(-1) == 1, "mlp_gemm: ", name, " must be row-major (unit last stride), got strides ",
              t.strides());
}

// d = a b with the given epilogue; a [m, k], b [k, n] and d [m, n] are 2-D views (d row-major), or 3-D batches of
// them ([batch, m, k] ...: one batched launch).
template <typename Backend>
void gemm(GemmEpilogue epilogue, const at::Tensor& a, const at::Tensor& b, const at::Tensor& d,
          const at::Tensor* t = nullptr, const at::Tensor* c = nullptr, float alpha = 1.0f, float beta = 0.0f,
          const at::Tensor* scale = nullptr) {
  GemmParams p;
  p.epilogue = epilogue;
  p.dtype = to_dtype(a.scalar_type());
  p.batch = a.dim() == 3 ? a.size(0) : 1;
  TORCH_CHECK(b.dim() == a.dim() && (a.dim() == 2 || b.size(0) == p.batch),
              "mlp_gemm: A and B must both be 2-D or both 3-D batches of one size, got ", a.sizes(), " and ",
              b.sizes());
  p.m = a.size(-2);
  p.k = a.size(-1);
  p.n = b.size(-1);
  p.a = operand_of("mlp_gemm", "A", a);
  p.b = operand_of("mlp_gemm", "B", b);
  check_output("D", d, p.batch);
  p.d = d.data_ptr();
  p.ldd = d.stride(-2);
  p.batch_stride_d = batch_stride(d);
  if (t != nullptr) {
    check_output("T", *t, p.batch);
    p.t = t->data_ptr();
    p.ldt = t->stride(-2);
    p.batch_stride_t = batch_stride(*t);
  }
  if (c != nullptr) {
    check_output("C", *c, p.batch);
    p.c = c->data_ptr();
    p.ldc = c->stride(-2);
    p.batch_stride_c = batch_stride(*c);
  }
  p.alpha = alpha;
  p.beta = beta;
  p.scale = scale != nullptr ? static_cast<const float*>(scale->data_ptr()) : nullptr;
  ops::SimBuffers buffers{{"A", a}, {"B", b}, {"D", d}};
  if (t != nullptr) buffers.add("T", *t);
  if (c != nullptr) buffers.add("C", *c);
  if (scale != nullptr) buffers.add("scale", *scale);
  Backend::gemm(p);
}

// t itself when it is contiguous and 16-byte aligned (what the CUTLASS operands need), else an aligned copy.
inline at::Tensor aligned_contiguous(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

// dst [groups * rows, cols] (dtype) from the rows of the sources (same shape and dtype, contiguous), interleaved or
// stacked; per batch entry for sources [B, rows, cols] (dst [B, groups * rows, cols]).
template <typename Backend>
at::Tensor pack_rows(std::vector<at::Tensor> sources, at::ScalarType dtype, bool interleave) {
  const at::Tensor& first = sources.front();
  std::vector<int64_t> shape = first.sizes().vec();
  shape[shape.size() - 2] *= static_cast<int64_t>(sources.size());
  at::Tensor dst = at::empty(shape, first.options().dtype(dtype));
  PackRowsParams p;
  for (size_t i = 0; i < sources.size(); ++i) p.src[i] = sources[i].data_ptr();
  p.src_dtype = to_dtype(first.scalar_type());
  p.batch = first.dim() == 3 ? first.size(0) : 1;
  p.src_rows = first.size(-2);
  p.cols = first.size(-1);
  p.groups = static_cast<int>(sources.size());
  p.interleave = interleave;
  p.dst = dst.data_ptr();
  p.dst_dtype = to_dtype(dtype);
  ops::SimBuffers buffers{{"dst", dst}};
  for (size_t i = 0; i < sources.size(); ++i) buffers.add("sources[" + std::to_string(i) + "]", sources[i]);
  Backend::pack_rows(p);
  return dst;
}

// w itself when it already is a 16-bit GEMM operand of dtype, else a packed copy.
template <typename Backend>
at::Tensor gemm_weight(const at::Tensor& w, at::ScalarType dtype) {
  if (w.scalar_type() == dtype) return aligned_contiguous(w);
  return pack_rows<Backend>({w}, dtype, false);
}

}  // namespace ttt::gemm_glue
