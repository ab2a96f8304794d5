// torch glue of the dynamic SwiGLU MLP and the clipped SGD step: schemas, argument checks, CPU / simulator / CUDA
// dispatch (math and layouts: include/ttt_kernels/mlp.h, docs/mlp.md).
//
//   swiglu_mlp_fwd(x [..., d], w1 [m, d], w3 [m, d], w2 [d, m]) -> (y [..., d], h [rows, m, 2])
//     or, batched (the fast weights of B sequences): x [B, n, d], w1 [B, m, d], w3 [B, m, d], w2 [B, d, m]
//   swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h?) -> (grad_x, grad_w1, grad_w3, grad_w2)
//   swiglu_gate_bwd_bwd(h, da, grad_h?, cot_dh [rows, 2, m], cot_a) -> (cot_h, cot_da, dh [rows, 2, m], a)
//   clip_sgd_update(weights[], grads[], lr, max_norm, batched) -> (new_weights[], norm)
//   clip_sgd_update_(weights[] (in place), grads[], lr, max_norm, batched) -> norm
//     batched: every tensor is [B, ...]; sequence b is clipped by the norm of its own slices (norm [B])
//   sgd_gemm_update_(weight [M, N] (in place), a [K, M], b [K, N], step []) -> ()     weight -= step * a^T b
//   _mlp_gemm(a, b, d (out), c?, t? (out), epilogue, alpha, beta, scale?) -> ()         the GEMM wrapper, for tests
//
// rows = x.numel() / d (B * n when batched). Weights have x's dtype, or float32 when x is bfloat16 / float16 (fp32
// master weights; their gradients are then float32 too).
// CPU: GEMMs in float32 (float64 for float64 x; cpu_gemm: the AVX-512 sgemm of csrc/cpu/mlp_gemm.cpp or BLAS) around
// the element-wise kernels of csrc/cpu/mlp.cpp.
// CUDA (and the simulator, on CPU tensors inside ttt_kernels.sim.enabled()): bfloat16 / float16 x with d and m
// multiples of 8; weights are packed into 16-bit GEMM operands by pack_rows, the GEMMs go through the CUTLASS
// wrapper mlp_gemm (a host stand-in in the simulator) and the gate's backward is a hand-written kernel.
// Autograd, fake tensors and the Python API are in python/ttt_kernels/ops/mlp.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"
#include "ttt_kernels/swiglu.h"

namespace ttt {
namespace {

using OptTensor = std::optional<at::Tensor>;

[[maybe_unused]] bool sim_enabled() {
#if defined(TTT_KERNELS_WITH_SIM)
  return sim::config().enabled;
#else
  return false;
#endif
}

// Dtypes reaching the kernels were checked against the op's schema rules already.
DType to_dtype(at::ScalarType t) { return ops::to_dtype("mlp", "tensor", t); }

bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}
bool is_16bit(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// float64 for float64, float32 for every other float dtype: the CPU kernels' math type.
at::ScalarType cpu_acc(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// out [B, m, n] = alpha a b + beta out on the CPU for batches of matrices a [B, m, k], b [B, k, n] (any strides; out
// with unit column stride): the AVX-512 sgemm (csrc/cpu/mlp_gemm.cpp) for float32 when cpu::use_sgemm(), else
// (batched) BLAS.
void cpu_bgemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double alpha = 1.0, double beta = 0.0) {
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
at::Tensor cpu_bmm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options());
  cpu_bgemm(out, a, b);
  return out;
}

// The last two dimensions of t swapped: a batch of transposed matrices.
at::Tensor mT(const at::Tensor& t) { return t.transpose(-2, -1); }

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on x's device ", ref.device(), ", got ",
              t.device());
}

void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides(), " for shape ",
              t.sizes());
}

// The problem of one swiglu_mlp call: `batch` independent MLPs (1 for unbatched weights) of `rows` rows each.
struct MlpShape {
  int64_t batch;
  int64_t rows;  // per batch entry
  int64_t d;
  int64_t m;
};

// x [..., d], w1 and w3 [m, d], w2 [d, m] (or batched: x [B, n, d], w1 and w3 [B, m, d], w2 [B, d, m]): dtypes,
// devices, shapes and contiguity.
MlpShape check_mlp(const char* op, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                   const at::Tensor& w2) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK(is_float(x.scalar_type()), op, ": x must be float32, float64, bfloat16 or float16, got ",
              x.scalar_type());
  const int64_t d = x.size(-1);
  TORCH_CHECK(d > 0, op, ": x must have a non-empty last dimension, got shape ", x.sizes());
  const bool batched = w1.dim() == 3;
  if (batched) {
    TORCH_CHECK(x.dim() == 3 && x.size(0) == w1.size(0), op, ": with batched weights w1 [B, m, d] = ", w1.sizes(),
                ", x must have shape [B, n, d] with B = ", w1.size(0), ", got ", x.sizes());
  }
  const std::string batch_dims = batched ? std::to_string(w1.size(0)) + ", " : "";
  TORCH_CHECK((w1.dim() == 2 || batched) && w1.size(-1) == d && w1.size(-2) > 0, op, ": w1 must have shape [",
              batched ? "B, " : "", "m, ", d, "] with m > 0 (torch.nn.Linear(d, m).weight), got ", w1.sizes());
  const int64_t m = w1.size(-2);
  TORCH_CHECK(w3.sizes() == w1.sizes(), op, ": w3 must have w1's shape ", w1.sizes(), ", got ", w3.sizes());
  TORCH_CHECK(w2.dim() == w1.dim() && w2.size(-2) == d && w2.size(-1) == m && (!batched || w2.size(0) == w1.size(0)),
              op, ": w2 must have shape [", batch_dims, d, ", ", m, "] (torch.nn.Linear(m, d).weight), got ",
              w2.sizes());
  const at::ScalarType wt = w1.scalar_type();
  TORCH_CHECK(wt == x.scalar_type() || (wt == at::kFloat && is_16bit(x.scalar_type())), op,
              ": the weights must have x's dtype ", x.scalar_type(),
              (is_16bit(x.scalar_type()) ? " or float32" : ""), ", got ", wt);
  for (const auto& [name, w] : {std::pair<const char*, const at::Tensor&>{"w1", w1}, {"w3", w3}, {"w2", w2}}) {
    TORCH_CHECK(w.scalar_type() == wt, op, ": w1, w3 and w2 must have one dtype, got ", wt, " and ",
                w.scalar_type(), " for ", name);
    check_same_device(op, name, w, x);
    check_contiguous(op, name, w);
  }
  check_contiguous(op, "x", x);
  const int64_t batch = batched ? w1.size(0) : 1;
  return {batch, batched ? x.size(1) : x.numel() / d, d, m};
}

// A weight as a batch of matrices: [B, r, c] unchanged, [r, c] as [1, r, c].
at::Tensor weight3(const at::Tensor& w) { return w.dim() == 3 ? w : w.unsqueeze(0); }

// x (or a tensor of x's shape) as [B, n, d].
at::Tensor rows3(const at::Tensor& x, const MlpShape& s) { return x.reshape({s.batch, s.rows, s.d}); }

void check_h(const char* op, const char* name, const at::Tensor& h, const at::Tensor& x, int64_t rows, int64_t m) {
  TORCH_CHECK(h.dim() == 3 && h.size(0) == rows && h.size(1) == m && h.size(2) == 2, op, ": ", name,
              " must have shape [", rows, ", ", m, ", 2] (the pre-activations of swiglu_mlp_fwd), got ", h.sizes());
  TORCH_CHECK(h.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(), ", got ",
              h.scalar_type());
  check_same_device(op, name, h, x);
  check_contiguous(op, name, h);
}

// ---- backends of the CUDA implementation --------------------------------------------------------------------------

// The CUDA MLP runs on a backend: the GPU (ttt::cuda, CUTLASS GEMMs) or the simulator (ttt::cuda_sim, CPU tensors).
#if defined(TTT_KERNELS_WITH_SIM)
struct SimBackend {
  static void* stream() { return nullptr; }
  static void pack_rows(const PackRowsParams& p) { cuda_sim::pack_rows(p, stream()); }
  static void swiglu_bwd(const SwigluBwdParams& p) { cuda_sim::swiglu_bwd(p, stream()); }
  static void swiglu_bwd_bwd(const SwigluBwdBwdParams& p) { cuda_sim::swiglu_bwd_bwd(p, stream()); }
  static int64_t clip_workspace(const ClipSgdParams& p) { return cuda_sim::clip_sgd_workspace_bytes(p); }
  static void clip_sgd_update(const ClipSgdParams& p) { cuda_sim::clip_sgd_update(p, stream()); }
  static void gemm(const GemmParams& p) { cuda_sim::mlp_gemm(p, stream()); }
};
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
struct CudaBackend {
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  static void pack_rows(const PackRowsParams& p) { cuda::pack_rows(p, stream()); }
  static void swiglu_bwd(const SwigluBwdParams& p) { cuda::swiglu_bwd(p, stream()); }
  static void swiglu_bwd_bwd(const SwigluBwdBwdParams& p) { cuda::swiglu_bwd_bwd(p, stream()); }
  static int64_t clip_workspace(const ClipSgdParams& p) { return cuda::clip_sgd_workspace_bytes(p); }
  static void clip_sgd_update(const ClipSgdParams& p) { cuda::clip_sgd_update(p, stream()); }
  static void gemm(const GemmParams& p) { cuda::mlp_gemm(p, stream()); }
};
#endif

// ---- GEMM operands --------------------------------------------------------------------------------------------------

// The batch stride of a 2-D view (one matrix: 0) or of a 3-D batch of matrices.
int64_t batch_stride(const at::Tensor& t) { return t.dim() == 3 ? t.stride(0) : 0; }

// A 2-D view or a 3-D batch of them as a GEMM operand: row-major when its last stride is 1, column-major when the one
// before is.
GemmOperand operand_of(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 || t.dim() == 3, op, ": ", name, " must be 2-D or 3-D, got shape ", t.sizes());
  if (t.stride(-1) == 1) return {t.data_ptr(), t.stride(-2), GemmLayout::kRowMajor, batch_stride(t)};
  TORCH_CHECK(t.stride(-2) == 1, op, ": ", name, " must have unit stride along one of its last two dimensions, ",
              "got strides ", t.strides());
  return {t.data_ptr(), t.stride(-1), GemmLayout::kColumnMajor, batch_stride(t)};
}

// A row-major output (D, C or T) of the GEMM wrapper: 2-D, or 3-D when batched.
void check_output(const char* name, const at::Tensor& t, int64_t batch) {
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
  Backend::gemm(p);
}

// t itself when it is contiguous and 16-byte aligned (what the CUTLASS operands need), else an aligned copy.
at::Tensor aligned_contiguous(const at::Tensor& t) {
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
  Backend::pack_rows(p);
  return dst;
}

// w itself when it already is a 16-bit GEMM operand of dtype, else a packed copy.
template <typename Backend>
at::Tensor gemm_weight(const at::Tensor& w, at::ScalarType dtype) {
  if (w.scalar_type() == dtype) return aligned_contiguous(w);
  return pack_rows<Backend>({w}, dtype, false);
}

void check_cuda_mlp(const char* op, const at::Tensor& x, int64_t d, int64_t m) {
  TORCH_CHECK(is_16bit(x.scalar_type()), op, ": on CUDA (and in the CUDA simulator) x must be bfloat16 or float16 ",
              "(the GEMMs run on tensor cores), got ", x.scalar_type());
  TORCH_CHECK(d % 8 == 0 && m % 8 == 0, op, ": on CUDA (and in the CUDA simulator) d and m must be multiples of 8 ",
              "(16-byte rows for the tensor-core GEMMs), got d=", d, ", m=", m);
}

// ---- swiglu_mlp_fwd -------------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> mlp_fwd_cpu_kernels(const at::Tensor& x, const at::Tensor& w1,
                                                       const at::Tensor& w3, const at::Tensor& w2,
                                                       const MlpShape& s) {
  const at::ScalarType acc = cpu_acc(x.scalar_type());
  const at::Tensor xf = rows3(x, s).to(acc);
  // h1 and h3 straight from BLAS into the two planes of one buffer.
  const at::Tensor planes = at::empty({2, s.batch, s.rows, s.m}, xf.options());
  at::Tensor h1 = planes[0];
  at::Tensor h3 = planes[1];
  cpu_bgemm(h1, xf, mT(weight3(w1).to(acc)));
  cpu_bgemm(h3, xf, mT(weight3(w3).to(acc)));
  const int64_t rows = s.batch * s.rows;
  at::Tensor h = at::empty({rows, s.m, 2}, xf.options());
  at::Tensor a = at::empty({s.batch, s.rows, s.m}, xf.options());
  SwigluFwdParams p;
  p.h1 = h1.data_ptr();
  p.h3 = h3.data_ptr();
  p.h = h.data_ptr();
  p.a = a.data_ptr();
  p.rows = rows;
  p.width = s.m;
  p.dtype = to_dtype(acc);
  cpu::swiglu_fwd(p);
  const at::Tensor y = cpu_bmm(a, mT(weight3(w2).to(acc)));
  return {y.to(x.scalar_type()).view(x.sizes()), h.to(x.scalar_type())};
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> mlp_fwd_device(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                                                  const at::Tensor& w2, const MlpShape& s) {
  check_cuda_mlp("swiglu_mlp_fwd", x, s.d, s.m);
  const at::ScalarType dt = x.scalar_type();
  const int64_t rows = s.batch * s.rows;
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor h = at::empty({rows, s.m, 2}, x.options());
  if (rows == 0) return {y, h};
  const at::Tensor x3 = rows3(aligned_contiguous(x), s);
  // [w1[0]; w3[0]; w1[1]; ...] per batch entry: the up-projection's accumulator columns (2j, 2j + 1) are (h1, h3) of
  // gate j.
  const at::Tensor w13 = pack_rows<Backend>({weight3(w1), weight3(w3)}, dt, true);
  const at::Tensor w2c = weight3(gemm_weight<Backend>(w2, dt));
  at::Tensor a = at::empty({s.batch, s.rows, s.m}, x.options());
  gemm<Backend>(GemmEpilogue::kSwiglu, x3, mT(w13), h.view({s.batch, s.rows, 2 * s.m}), &a);
  gemm<Backend>(GemmEpilogue::kStore, a, mT(w2c), y.view({s.batch, s.rows, s.d}));
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor> mlp_fwd_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                                               const at::Tensor& w2) {
  const MlpShape s = check_mlp("swiglu_mlp_fwd", x, w1, w3, w2);
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim_enabled()) return mlp_fwd_device<SimBackend>(x, w1, w3, w2, s);
#endif
  return mlp_fwd_cpu_kernels(x, w1, w3, w2, s);
}

// ---- swiglu_mlp_bwd -------------------------------------------------------------------------------------------------

void check_bwd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const OptTensor& grad_h,
               const MlpShape& s) {
  const int64_t rows = s.batch * s.rows;
  const int64_t m = s.m;
  const char* op = "swiglu_mlp_bwd";
  TORCH_CHECK(grad_y.sizes() == x.sizes(), op, ": grad_y must have x's shape ", x.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y must have x's dtype ", x.scalar_type(),
              ", got ", grad_y.scalar_type());
  check_same_device(op, "grad_y", grad_y, x);
  check_contiguous(op, "grad_y", grad_y);
  check_h(op, "h", h, x, rows, m);
  if (grad_h) check_h(op, "grad_h", *grad_h, x, rows, m);
}

using BwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

BwdResult mlp_bwd_cpu_kernels(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1,
                              const at::Tensor& w3, const at::Tensor& w2, const at::Tensor& h,
                              const OptTensor& grad_h, const MlpShape& s) {
  const at::ScalarType acc = cpu_acc(x.scalar_type());
  const int64_t rows = s.batch * s.rows;
  const int64_t m = s.m;
  const at::Tensor dyf = rows3(grad_y, s).to(acc);
  const at::Tensor xf = rows3(x, s).to(acc);
  const at::Tensor w1f = weight3(w1).to(acc);
  const at::Tensor w3f = weight3(w3).to(acc);
  const at::Tensor w2f = weight3(w2).to(acc);
  const at::Tensor hf = h.to(acc);
  const at::Tensor ghf = grad_h ? grad_h->to(acc) : at::Tensor();
  const at::Tensor da = cpu_bmm(dyf, w2f);
  at::Tensor dh = at::empty({rows, 2, m}, xf.options());
  at::Tensor a = at::empty({s.batch, s.rows, m}, xf.options());
  SwigluBwdParams p;
  p.h = hf.data_ptr();
  p.grad_h = grad_h ? ghf.data_ptr() : nullptr;
  p.da = da.data_ptr();
  p.dh = dh.data_ptr();
  p.a = a.data_ptr();
  p.rows = rows;
  p.width = m;
  p.dtype = to_dtype(acc);
  cpu::swiglu_bwd(p);
  // dh1, dh3: [B, n, m] views with row stride 2m (BLAS takes them without a copy).
  const at::Tensor dh4 = dh.view({s.batch, s.rows, 2, m});
  const at::Tensor dh1 = dh4.select(2, 0);
  const at::Tensor dh3 = dh4.select(2, 1);
  at::Tensor dx = cpu_bmm(dh1, w1f);
  cpu_bgemm(dx, dh3, w3f, 1.0, 1.0);
  const at::ScalarType wt = w1.scalar_type();
  const auto weight_grad = [&](const at::Tensor& g, const at::Tensor& w) { return g.to(wt).view(w.sizes()); };
  return {dx.to(x.scalar_type()).view(x.sizes()), weight_grad(cpu_bmm(mT(dh1), xf), w1),
          weight_grad(cpu_bmm(mT(dh3), xf), w3), weight_grad(cpu_bmm(mT(dyf), a), w2)};
}

template <typename Backend>
BwdResult mlp_bwd_device(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                         const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h, const MlpShape& s) {
  check_cuda_mlp("swiglu_mlp_bwd", x, s.d, s.m);
  const at::ScalarType dt = x.scalar_type();
  const at::ScalarType wt = w1.scalar_type();
  const int64_t rows = s.batch * s.rows;
  const int64_t m = s.m;
  at::Tensor dx = at::empty(x.sizes(), x.options());
  // The weight gradients come out of the GEMMs in float32 (zero without rows); 16-bit weights get a converted copy.
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  const auto alloc = [&](const at::Tensor& w) {
    return rows > 0 ? at::empty(w.sizes(), f32) : at::zeros(w.sizes(), f32);
  };
  at::Tensor dw1 = alloc(w1);
  at::Tensor dw3 = alloc(w3);
  at::Tensor dw2 = alloc(w2);
  if (rows > 0) {
    const at::Tensor dy3 = rows3(aligned_contiguous(grad_y), s);
    const at::Tensor x3 = rows3(aligned_contiguous(x), s);
    const at::Tensor w2c = weight3(gemm_weight<Backend>(w2, dt));
    // [w1; w3] per batch entry: dh viewed as [B, n, 2m] times it is dx.
    const at::Tensor w13 = pack_rows<Backend>({weight3(w1), weight3(w3)}, dt, false);
    at::Tensor da = at::empty({s.batch, s.rows, m}, x.options());
    gemm<Backend>(GemmEpilogue::kStore, dy3, w2c, da);

    at::Tensor dh = at::empty({rows, 2, m}, x.options());
    at::Tensor a = at::empty({s.batch, s.rows, m}, x.options());
    const at::Tensor hc = aligned_contiguous(h);
    const at::Tensor ghc = grad_h ? aligned_contiguous(*grad_h) : at::Tensor();
    SwigluBwdParams p;
    p.h = hc.data_ptr();
    p.grad_h = grad_h ? ghc.data_ptr() : nullptr;
    p.da = da.data_ptr();
    p.dh = dh.data_ptr();
    p.a = a.data_ptr();
    p.rows = rows;
    p.width = m;
    p.dtype = to_dtype(dt);
    Backend::swiglu_bwd(p);

    const at::Tensor dh4 = dh.view({s.batch, s.rows, 2, m});
    gemm<Backend>(GemmEpilogue::kStore, dh.view({s.batch, s.rows, 2 * m}), w13, rows3(dx, s));
    gemm<Backend>(GemmEpilogue::kAccumulate, mT(dh4.select(2, 0)), x3, weight3(dw1));
    gemm<Backend>(GemmEpilogue::kAccumulate, mT(dh4.select(2, 1)), x3, weight3(dw3));
    gemm<Backend>(GemmEpilogue::kAccumulate, mT(dy3), a, weight3(dw2));
  }
  if (wt == at::kFloat) return {dx, dw1, dw3, dw2};
  return {dx, pack_rows<Backend>({dw1}, wt, false), pack_rows<Backend>({dw3}, wt, false),
          pack_rows<Backend>({dw2}, wt, false)};
}

BwdResult mlp_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                      const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h) {
  const MlpShape s = check_mlp("swiglu_mlp_bwd", x, w1, w3, w2);
  check_bwd(grad_y, x, h, grad_h, s);
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim_enabled()) return mlp_bwd_device<SimBackend>(grad_y, x, w1, w3, w2, h, grad_h, s);
#endif
  return mlp_bwd_cpu_kernels(grad_y, x, w1, w3, w2, h, grad_h, s);
}

// ---- swiglu_gate_bwd_bwd --------------------------------------------------------------------------------------------

using GateBwdBwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Checks the shapes ([rows, m, 2] h and grad_h, [rows, m] da and cot_a, [rows, 2, m] cot_dh), allocates the outputs
// in `dtype` and fills the params from the (already converted) inputs.
template <typename Launch>
GateBwdBwdResult gate_bwd_bwd(const at::Tensor& h, const at::Tensor& da, const OptTensor& grad_h,
                              const at::Tensor& cot_dh, const at::Tensor& cot_a, at::ScalarType dtype,
                              Launch&& launch) {
  const char* op = "swiglu_gate_bwd_bwd";
  TORCH_CHECK(h.dim() == 3 && h.size(2) == 2, op, ": h must have shape [rows, m, 2], got ", h.sizes());
  const int64_t rows = h.size(0);
  const int64_t m = h.size(1);
  TORCH_CHECK(is_float(h.scalar_type()), op, ": h must be a float tensor, got ", h.scalar_type());
  const auto check = [&](const char* name, const at::Tensor& t, c10::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == h.scalar_type(), op, ": ", name, " must have h's dtype ", h.scalar_type(),
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == h.device(), op, ": ", name, " must be on h's device ", h.device(), ", got ",
                t.device());
    check_contiguous(op, name, t);
  };
  check("h", h, {rows, m, 2});
  check("da", da, {rows, m});
  if (grad_h) check("grad_h", *grad_h, {rows, m, 2});
  check("cot_dh", cot_dh, {rows, 2, m});
  check("cot_a", cot_a, {rows, m});
  const at::TensorOptions opts = h.options().dtype(dtype);
  at::Tensor cot_h = at::empty({rows, m, 2}, opts);
  at::Tensor cot_da = at::empty({rows, m}, opts);
  at::Tensor dh = at::empty({rows, 2, m}, opts);
  at::Tensor a = at::empty({rows, m}, opts);
  const auto conv = [&](const at::Tensor& t) { return t.to(dtype); };
  const at::Tensor hc = conv(h), dac = conv(da), cdc = conv(cot_dh), cac = conv(cot_a);
  const at::Tensor ghc = grad_h ? conv(*grad_h) : at::Tensor();
  SwigluBwdBwdParams p;
  p.h = hc.data_ptr();
  p.da = dac.data_ptr();
  p.grad_h = grad_h ? ghc.data_ptr() : nullptr;
  p.cot_dh = cdc.data_ptr();
  p.cot_a = cac.data_ptr();
  p.cot_h = cot_h.data_ptr();
  p.cot_da = cot_da.data_ptr();
  p.dh = dh.data_ptr();
  p.a = a.data_ptr();
  p.rows = rows;
  p.width = m;
  p.dtype = to_dtype(dtype);
  launch(p);
  const at::ScalarType out = h.scalar_type();
  return {cot_h.to(out), cot_da.to(out), dh.to(out), a.to(out)};
}

GateBwdBwdResult gate_bwd_bwd_cpu(const at::Tensor& h, const at::Tensor& da, const OptTensor& grad_h,
                                  const at::Tensor& cot_dh, const at::Tensor& cot_a) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim_enabled()) {
    return gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a, h.scalar_type(),
                        [](const SwigluBwdBwdParams& p) { SimBackend::swiglu_bwd_bwd(p); });
  }
#endif
  return gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a, cpu_acc(h.scalar_type()),
                      [](const SwigluBwdBwdParams& p) { cpu::swiglu_bwd_bwd(p); });
}

// ---- clipped SGD ----------------------------------------------------------------------------------------------------

// The sequences of a (batched) clip: the common leading dimension of all weights, 1 when not batched.
int64_t clip_batch(const char* op, at::TensorList weights, bool batched) {
  if (!batched) return 1;
  TORCH_CHECK(!weights.empty(), op, ": batched needs at least one weight (the batch size is their leading dimension)");
  TORCH_CHECK(weights[0].dim() >= 1 && weights[0].size(0) >= 1, op,
              ": batched weights must have a leading batch dimension >= 1, got weights[0] of shape ",
              weights[0].sizes());
  const int64_t batch = weights[0].size(0);
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK(weights[i].dim() >= 1 && weights[i].size(0) == batch, op, ": batched weights must share the leading ",
                "dimension of weights[0] (", batch, "), got weights[", i, "] of shape ", weights[i].sizes());
  }
  return batch;
}

// Checks the lists (same length, pairwise same shape, one float32 / float64 dtype, one device, contiguous) and
// max_norm / lr; returns the (weight, grad, out) table with outs[i] as the destination of weights[i].
std::vector<ClipTensor> clip_table(const char* op, at::TensorList weights, at::TensorList grads,
                                   const std::vector<at::Tensor>& outs, double lr, double max_norm) {
  TORCH_CHECK(weights.size() == grads.size(), op, ": weights and grads must have the same length, got ",
              weights.size(), " and ", grads.size());
  TORCH_CHECK(std::isfinite(lr), op, ": lr must be finite, got ", lr);
  TORCH_CHECK(max_norm > 0.0 && !std::isnan(max_norm), op, ": max_norm must be > 0 (inf: no clipping), got ",
              max_norm);
  std::vector<ClipTensor> table(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& ref = weights[0];
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, op, ": weights[", i,
                "] must be float32 or float64, got ", w.scalar_type());
    TORCH_CHECK(w.scalar_type() == ref.scalar_type() && g.scalar_type() == ref.scalar_type(), op, ": weights[", i,
                "] and grads[", i, "] must have the dtype of weights[0] (", ref.scalar_type(), "), got ",
                w.scalar_type(), " and ", g.scalar_type());
    TORCH_CHECK(g.sizes() == w.sizes(), op, ": grads[", i, "] must have the shape of weights[", i, "] ", w.sizes(),
                ", got ", g.sizes());
    TORCH_CHECK(w.device() == ref.device() && g.device() == ref.device(), op, ": weights[", i, "] and grads[", i,
                "] must be on the device of weights[0] (", ref.device(), ")");
    TORCH_CHECK(w.is_contiguous() && g.is_contiguous(), op, ": weights[", i, "] and grads[", i,
                "] must be contiguous");
    table[i] = {w.data_ptr(), g.data_ptr(), outs[i].data_ptr(), w.numel()};
  }
  return table;
}

// Runs the update from weights into outs; returns the norm (0-d, the weights' dtype; [B] when batched).
template <typename Kernel>
at::Tensor clip_sgd(const char* op, at::TensorList weights, at::TensorList grads, const std::vector<at::Tensor>& outs,
                    double lr, double max_norm, bool batched, Kernel&& kernel) {
  const std::vector<ClipTensor> table = clip_table(op, weights, grads, outs, lr, max_norm);
  const int64_t batch = clip_batch(op, weights, batched);
  const at::TensorOptions opts =
      weights.empty() ? at::TensorOptions().dtype(at::kFloat) : weights[0].options();
  at::Tensor norm = batched ? at::empty({batch}, opts) : at::empty({}, opts);
  ClipSgdParams p;
  p.tensors = table.data();
  p.count = static_cast<int64_t>(table.size());
  p.batch = batch;
  p.dtype = to_dtype(opts.dtype().toScalarType());
  p.lr = lr;
  p.max_norm = max_norm;
  p.norm = norm.data_ptr();
  kernel(p, opts);
  return norm;
}

template <typename Backend>
void clip_on_device(ClipSgdParams& p, const at::TensorOptions& opts) {
  const at::Tensor workspace = at::empty({Backend::clip_workspace(p)}, opts.dtype(at::kByte));
  p.workspace = workspace.data_ptr();
  Backend::clip_sgd_update(p);
}

void clip_on_cpu(ClipSgdParams& p, const at::TensorOptions& opts) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim_enabled()) return clip_on_device<SimBackend>(p, opts);
#endif
  (void)opts;
  cpu::clip_sgd_update(p);
}

template <typename Run>
std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_out_of_place(at::TensorList weights, at::TensorList grads,
                                                                      double lr, double max_norm, bool batched,
                                                                      Run&& run) {
  std::vector<at::Tensor> outs;
  outs.reserve(weights.size());
  for (const at::Tensor& w : weights) outs.push_back(at::empty_like(w, at::MemoryFormat::Contiguous));
  at::Tensor norm = clip_sgd("clip_sgd_update", weights, grads, outs, lr, max_norm, batched, run);
  return {outs, norm};
}

template <typename Run>
at::Tensor clip_sgd_in_place(at::TensorList weights, at::TensorList grads, double lr, double max_norm, bool batched,
                             Run&& run) {
  const std::vector<at::Tensor> outs(weights.begin(), weights.end());
  return clip_sgd("clip_sgd_update_", weights, grads, outs, lr, max_norm, batched, run);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_update_cpu(at::TensorList weights, at::TensorList grads,
                                                                    double lr, double max_norm, bool batched) {
  return clip_sgd_out_of_place(weights, grads, lr, max_norm, batched, clip_on_cpu);
}

at::Tensor clip_sgd_update_inplace_cpu(at::TensorList weights, at::TensorList grads, double lr, double max_norm,
                                       bool batched) {
  return clip_sgd_in_place(weights, grads, lr, max_norm, batched, clip_on_cpu);
}

// ---- sgd_gemm_update_ -----------------------------------------------------------------------------------------------

// weight [M, N] float32 (float64 on the CPU), a [K, M], b [K, N], step a one-element float32 tensor on the device.
void check_gemm_update(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& step) {
  const char* op = "sgd_gemm_update_";
  TORCH_CHECK(weight.dim() == 2 && a.dim() == 2 && b.dim() == 2, op, ": weight, a and b must be 2-D, got ",
              weight.sizes(), ", ", a.sizes(), ", ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(1) == weight.size(0) && b.size(1) == weight.size(1), op,
              ": need weight [M, N], a [K, M], b [K, N], got ", weight.sizes(), ", ", a.sizes(), ", ", b.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": weight must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK(is_float(a.scalar_type()) && b.scalar_type() == a.scalar_type(), op,
              ": a and b must be float tensors of one dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(step.numel() == 1 && step.scalar_type() == at::kFloat, op,
              ": step must be a one-element float32 tensor, got ", step.sizes(), " ", step.scalar_type());
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"a", a}, {"b", b}, {"step", step}}) {
    TORCH_CHECK(t.device() == weight.device(), op, ": ", name, " must be on weight's device ", weight.device(),
                ", got ", t.device());
  }
  check_contiguous(op, "weight", weight);
}

template <typename Backend>
void gemm_update_device(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& step) {
  const char* op = "sgd_gemm_update_";
  TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": on CUDA weight must be float32, got ", weight.scalar_type());
  TORCH_CHECK(is_16bit(a.scalar_type()), op, ": on CUDA a and b must be bfloat16 or float16, got ", a.scalar_type());
  if (a.size(0) == 0 || weight.numel() == 0) return;
  const at::Tensor ac = aligned_contiguous(a);
  const at::Tensor bc = aligned_contiguous(b);
  const at::Tensor sc = step.contiguous();
  gemm<Backend>(GemmEpilogue::kAccumulate, ac.t(), bc, weight, nullptr, &weight, -1.0f, 1.0f, &sc);
}

void sgd_gemm_update_cpu(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& step) {
  check_gemm_update(weight, a, b, step);
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim_enabled()) return gemm_update_device<SimBackend>(weight, a, b, step);
#endif
  const at::ScalarType wt = weight.scalar_type();
  // weight is contiguous (checked): the GEMM accumulates into it directly (beta = 1), the gradient is never stored.
  at::Tensor w = weight.unsqueeze(0);
  cpu_bgemm(w, a.to(wt).t().unsqueeze(0), b.to(wt).unsqueeze(0), -step.item<double>(), 1.0);
}

// ---- _mlp_gemm ------------------------------------------------------------------------------------------------------

GemmEpilogue epilogue_of(std::string_view name) {
  if (name == "store") return GemmEpilogue::kStore;
  if (name == "swiglu") return GemmEpilogue::kSwiglu;
  if (name == "accumulate") return GemmEpilogue::kAccumulate;
  TORCH_CHECK(false, "_mlp_gemm: epilogue must be 'store', 'swiglu' or 'accumulate', got '", name, "'");
}

template <typename Backend>
void mlp_gemm_op(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const OptTensor& c,
                 const OptTensor& t, std::string_view epilogue, double alpha, double beta, const OptTensor& scale) {
  for (const at::Tensor* x : {&b, &d}) {
    TORCH_CHECK(x->device() == a.device(), "_mlp_gemm: a, b, d, c, t and scale must be on one device");
  }
  TORCH_CHECK(is_16bit(a.scalar_type()) && b.scalar_type() == a.scalar_type(),
              "_mlp_gemm: a and b must be bfloat16 or float16 tensors of one dtype");
  gemm<Backend>(epilogue_of(epilogue), a, b, d, t ? &*t : nullptr, c ? &*c : nullptr, static_cast<float>(alpha),
                static_cast<float>(beta), scale ? &*scale : nullptr);
}

void mlp_gemm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const OptTensor& c,
                  const OptTensor& t, c10::string_view epilogue, double alpha, double beta, const OptTensor& scale) {
#if defined(TTT_KERNELS_WITH_SIM)
  TORCH_CHECK(sim_enabled(), "_mlp_gemm: the GEMM wrapper of the CUDA kernels runs on CUDA tensors or, for CPU ",
              "tensors, inside ttt_kernels.sim.enabled() (its simulator stand-in)");
  mlp_gemm_op<SimBackend>(a, b, d, c, t, std::string_view(epilogue.data(), epilogue.size()), alpha, beta, scale);
#else
  (void)a, (void)b, (void)d, (void)c, (void)t, (void)epilogue, (void)alpha, (void)beta, (void)scale;
  TORCH_CHECK(false, "_mlp_gemm: built without the CUDA simulator; CPU tensors are not supported");
#endif
}

// ---- CUDA -----------------------------------------------------------------------------------------------------------

#if defined(TTT_KERNELS_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor> mlp_fwd_cuda(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                                                const at::Tensor& w2) {
  const MlpShape s = check_mlp("swiglu_mlp_fwd", x, w1, w3, w2);
  const c10::cuda::CUDAGuard guard(x.device());
  return mlp_fwd_device<CudaBackend>(x, w1, w3, w2, s);
}

BwdResult mlp_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                       const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h) {
  const MlpShape s = check_mlp("swiglu_mlp_bwd", x, w1, w3, w2);
  check_bwd(grad_y, x, h, grad_h, s);
  const c10::cuda::CUDAGuard guard(x.device());
  return mlp_bwd_device<CudaBackend>(grad_y, x, w1, w3, w2, h, grad_h, s);
}

GateBwdBwdResult gate_bwd_bwd_cuda(const at::Tensor& h, const at::Tensor& da, const OptTensor& grad_h,
                                   const at::Tensor& cot_dh, const at::Tensor& cot_a) {
  const c10::cuda::CUDAGuard guard(h.device());
  return gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a, h.scalar_type(),
                      [](const SwigluBwdBwdParams& p) { CudaBackend::swiglu_bwd_bwd(p); });
}

void clip_on_cuda(ClipSgdParams& p, const at::TensorOptions& opts) { clip_on_device<CudaBackend>(p, opts); }

std::tuple<std::vector<at::Tensor>, at::Tensor> clip_sgd_update_cuda(at::TensorList weights, at::TensorList grads,
                                                                     double lr, double max_norm, bool batched) {
  const c10::cuda::OptionalCUDAGuard guard(weights.empty() ? std::nullopt : std::optional(weights[0].device()));
  return clip_sgd_out_of_place(weights, grads, lr, max_norm, batched, clip_on_cuda);
}

at::Tensor clip_sgd_update_inplace_cuda(at::TensorList weights, at::TensorList grads, double lr, double max_norm,
                                        bool batched) {
  const c10::cuda::OptionalCUDAGuard guard(weights.empty() ? std::nullopt : std::optional(weights[0].device()));
  return clip_sgd_in_place(weights, grads, lr, max_norm, batched, clip_on_cuda);
}

void sgd_gemm_update_cuda(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                          const at::Tensor& step) {
  check_gemm_update(weight, a, b, step);
  const c10::cuda::CUDAGuard guard(weight.device());
  gemm_update_device<CudaBackend>(weight, a, b, step);
}

void mlp_gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const OptTensor& c,
                   const OptTensor& t, c10::string_view epilogue, double alpha, double beta, const OptTensor& scale) {
  const c10::cuda::CUDAGuard guard(a.device());
  mlp_gemm_op<CudaBackend>(a, b, d, c, t, std::string_view(epilogue.data(), epilogue.size()), alpha, beta, scale);
}
#endif

}  // namespace
}  // namespace ttt

TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def("swiglu_mlp_fwd(Tensor x, Tensor w1, Tensor w3, Tensor w2) -> (Tensor y, Tensor h)");
  m.def(
      "swiglu_mlp_bwd(Tensor grad_y, Tensor x, Tensor w1, Tensor w3, Tensor w2, Tensor h, Tensor? grad_h) -> "
      "(Tensor grad_x, Tensor grad_w1, Tensor grad_w3, Tensor grad_w2)");
  m.def(
      "swiglu_gate_bwd_bwd(Tensor h, Tensor da, Tensor? grad_h, Tensor cot_dh, Tensor cot_a) -> "
      "(Tensor cot_h, Tensor cot_da, Tensor dh, Tensor a)");
  m.def(
      "clip_sgd_update(Tensor[] weights, Tensor[] grads, float lr, float max_norm, bool batched=False) -> "
      "(Tensor[] new_weights, Tensor norm)");
  m.def(
      "clip_sgd_update_(Tensor(a!)[] weights, Tensor[] grads, float lr, float max_norm, bool batched=False) -> "
      "Tensor norm");
  m.def("sgd_gemm_update_(Tensor(a!) weight, Tensor a, Tensor b, Tensor step) -> ()");
  m.def(
      "_mlp_gemm(Tensor a, Tensor b, Tensor(a!) d, Tensor? c, Tensor(b!)? t, str epilogue, float alpha, "
      "float beta, Tensor? scale) -> ()");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) {
  m.impl("swiglu_mlp_fwd", &ttt::mlp_fwd_cpu);
  m.impl("swiglu_mlp_bwd", &ttt::mlp_bwd_cpu);
  m.impl("swiglu_gate_bwd_bwd", &ttt::gate_bwd_bwd_cpu);
  m.impl("clip_sgd_update", &ttt::clip_sgd_update_cpu);
  m.impl("clip_sgd_update_", &ttt::clip_sgd_update_inplace_cpu);
  m.impl("sgd_gemm_update_", &ttt::sgd_gemm_update_cpu);
  m.impl("_mlp_gemm", &ttt::mlp_gemm_cpu);
}

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("swiglu_mlp_fwd", &ttt::mlp_fwd_cuda);
  m.impl("swiglu_mlp_bwd", &ttt::mlp_bwd_cuda);
  m.impl("swiglu_gate_bwd_bwd", &ttt::gate_bwd_bwd_cuda);
  m.impl("clip_sgd_update", &ttt::clip_sgd_update_cuda);
  m.impl("clip_sgd_update_", &ttt::clip_sgd_update_inplace_cuda);
  m.impl("sgd_gemm_update_", &ttt::sgd_gemm_update_cuda);
  m.impl("_mlp_gemm", &ttt::mlp_gemm_cuda);
}
#endif
