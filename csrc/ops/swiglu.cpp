// torch glue of the dynamic SwiGLU MLP: schemas, argument checks, CPU / simulator / CUDA dispatch (math and layouts:
// include/ttt_kernels/swiglu.h, docs/mlp.md; the GEMMs: include/ttt_kernels/gemm.h and the glue shared with
// csrc/ops/gemm.cpp, gemm_glue.h).
//
//   swiglu_mlp_fwd(x [..., d], w1 [m, d], w3 [m, d], w2 [d, m]) -> (y [..., d], h [rows, m, 2])
//     or, batched (the fast weights of B sequences): x [B, n, d], w1 [B, m, d], w3 [B, m, d], w2 [B, d, m]
//   swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h?, output_mask) -> (grad_x, grad_w1, grad_w3, grad_w2)
//     output_mask (bool[4], default all true) selects the gradients computed; the others are undefined (None in
//     Python) and their GEMMs skipped, like ATen's backward ops (a frozen weight, an input without a gradient).
//   swiglu_gate_bwd_bwd(h, da, grad_h?, cot_dh [rows, 2, m], cot_a) -> (cot_h, cot_da, dh [rows, 2, m], a)
//
// rows = x.numel() / d (B * n when batched). Weights have x's dtype, or float32 when x is bfloat16 / float16 (fp32
// master weights; their gradients are then float32 too).
// CPU: GEMMs in float32 (float64 for float64 x; cpu_bgemm: the AVX-512 sgemm of csrc/cpu/gemm.cpp or BLAS) around
// the element-wise kernels of csrc/cpu/swiglu.cpp.
// CUDA (and the simulator, on CPU tensors inside ttt_kernels.sim.enabled()): bfloat16 / float16 x with d and m
// multiples of 8; weights are packed into 16-bit GEMM operands by pack_rows, the GEMMs go through the CUTLASS
// wrapper mlp_gemm and the gate's backward is a hand-written kernel
// (csrc/cuda/swiglu.cu).
// The autograd formulas of swiglu_mlp_fwd (its backward is swiglu_mlp_bwd) and swiglu_mlp_bwd (the double backward)
// are at the end of this file; the fake tensors and the Python API are in python/ttt_kernels/ops/swiglu.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd.h"
#include "gemm_glue.h"
#include "ttt_kernels/gemm.h"
#include "ttt_kernels/swiglu.h"

namespace ttt {
namespace {

using namespace gemm_glue;

// float64 for float64, float32 for every other float dtype: the CPU kernels' math type.
at::ScalarType cpu_acc(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The last two dimensions of t swapped: a batch of transposed matrices.
at::Tensor mT(const at::Tensor& t) { return t.transpose(-2, -1); }

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on x's device ", ref.device(), ", got ",
              t.device());
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

// The gate backward's tensors, all of h's dtype: h [rows, m, 2], grad_h (undefined: none) like h, da and a [..., m]
// with rows * m elements, dh [rows, 2, m]; CPU and CUDA kernels alike.
void set_params(SwigluBwdParams& p, const at::Tensor& h, const at::Tensor& grad_h, const at::Tensor& da,
                const at::Tensor& dh, const at::Tensor& a) {
  p.h = h.data_ptr();
  p.grad_h = grad_h.defined() ? grad_h.data_ptr() : nullptr;
  p.da = da.data_ptr();
  p.dh = dh.data_ptr();
  p.a = a.data_ptr();
  p.rows = dh.size(0);
  p.width = dh.size(2);
  p.dtype = to_dtype(h.scalar_type());
}

// ---- backends of the CUDA implementation --------------------------------------------------------------------------

// The GEMMs' backends (gemm_glue.h) with the gate's kernels.
#if defined(TTT_KERNELS_WITH_SIM)
struct SimBackend : SimGemm {
  static void swiglu_bwd(const SwigluBwdParams& p) { cuda_sim::swiglu_bwd(p, stream()); }
  static void swiglu_bwd_bwd(const SwigluBwdBwdParams& p) { cuda_sim::swiglu_bwd_bwd(p, stream()); }
};
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
struct CudaBackend : CudaGemm {
  static void swiglu_bwd(const SwigluBwdParams& p) { cuda::swiglu_bwd(p, stream()); }
  static void swiglu_bwd_bwd(const SwigluBwdBwdParams& p) { cuda::swiglu_bwd_bwd(p, stream()); }
};
#endif

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
  if (sim::config().enabled) return mlp_fwd_device<SimBackend>(x, w1, w3, w2, s);
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
// Which of (grad_x, grad_w1, grad_w3, grad_w2) to compute.
using BwdMask = std::array<bool, 4>;

BwdResult mlp_bwd_cpu_kernels(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1,
                              const at::Tensor& w3, const at::Tensor& w2, const at::Tensor& h,
                              const OptTensor& grad_h, const MlpShape& s, const BwdMask& mask) {
  const at::ScalarType acc = cpu_acc(x.scalar_type());
  const int64_t rows = s.batch * s.rows;
  const int64_t m = s.m;
  const at::Tensor dyf = rows3(grad_y, s).to(acc);
  const at::Tensor xf = rows3(x, s).to(acc);
  const at::Tensor w2f = weight3(w2).to(acc);
  const at::Tensor hf = h.to(acc);
  const at::Tensor ghf = grad_h ? grad_h->to(acc) : at::Tensor();
  const at::Tensor da = cpu_bmm(dyf, w2f);
  at::Tensor dh = at::empty({rows, 2, m}, xf.options());
  at::Tensor a = at::empty({s.batch, s.rows, m}, xf.options());
  SwigluBwdParams p;
  set_params(p, hf, ghf, da, dh, a);
  cpu::swiglu_bwd(p);
  // dh1, dh3: [B, n, m] views with row stride 2m (BLAS takes them without a copy).
  const at::Tensor dh4 = dh.view({s.batch, s.rows, 2, m});
  const at::Tensor dh1 = dh4.select(2, 0);
  const at::Tensor dh3 = dh4.select(2, 1);
  at::Tensor dx;
  if (mask[0]) {
    dx = cpu_bmm(dh1, weight3(w1).to(acc));
    cpu_bgemm(dx, dh3, weight3(w3).to(acc), 1.0, 1.0);
    dx = dx.to(x.scalar_type()).view(x.sizes());
  }
  // grad = g^T b in w's dtype and shape, when selected.
  const auto weight_grad = [&](bool selected, const at::Tensor& g, const at::Tensor& b, const at::Tensor& w) {
    return selected ? cpu_bmm(mT(g), b).to(w.scalar_type()).view(w.sizes()) : at::Tensor();
  };
  return {dx, weight_grad(mask[1], dh1, xf, w1), weight_grad(mask[2], dh3, xf, w3), weight_grad(mask[3], dyf, a, w2)};
}

template <typename Backend>
BwdResult mlp_bwd_device(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                         const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h, const MlpShape& s,
                         const BwdMask& mask) {
  check_cuda_mlp("swiglu_mlp_bwd", x, s.d, s.m);
  const at::ScalarType dt = x.scalar_type();
  const at::ScalarType wt = w1.scalar_type();
  const int64_t rows = s.batch * s.rows;
  const int64_t m = s.m;
  at::Tensor dx = mask[0] ? at::empty(x.sizes(), x.options()) : at::Tensor();
  // The weight gradients come out of the GEMMs in float32 (zero without rows); 16-bit weights get a converted copy.
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  const auto alloc = [&](bool selected, const at::Tensor& w) {
    if (!selected) return at::Tensor();
    return rows > 0 ? at::empty(w.sizes(), f32) : at::zeros(w.sizes(), f32);
  };
  at::Tensor dw1 = alloc(mask[1], w1);
  at::Tensor dw3 = alloc(mask[2], w3);
  at::Tensor dw2 = alloc(mask[3], w2);
  if (rows > 0) {
    const at::Tensor dy3 = rows3(aligned_contiguous(grad_y), s);
    const at::Tensor x3 = rows3(aligned_contiguous(x), s);
    const at::Tensor w2c = weight3(gemm_weight<Backend>(w2, dt));
    at::Tensor da = at::empty({s.batch, s.rows, m}, x.options());
    gemm<Backend>(GemmEpilogue::kStore, dy3, w2c, da);

    at::Tensor dh = at::empty({rows, 2, m}, x.options());
    at::Tensor a = at::empty({s.batch, s.rows, m}, x.options());
    const at::Tensor hc = aligned_contiguous(h);
    const at::Tensor ghc = grad_h ? aligned_contiguous(*grad_h) : at::Tensor();
    SwigluBwdParams p;
    set_params(p, hc, ghc, da, dh, a);
    const ops::SimBuffers buffers{{"h", hc}, {"grad_h", ghc}, {"da", da}, {"dh", dh}, {"a", a}};
    Backend::swiglu_bwd(p);

    const at::Tensor dh4 = dh.view({s.batch, s.rows, 2, m});
    if (mask[0]) {
      // [w1; w3] per batch entry: dh viewed as [B, n, 2m] times it is dx.
      const at::Tensor w13 = pack_rows<Backend>({weight3(w1), weight3(w3)}, dt, false);
      gemm<Backend>(GemmEpilogue::kStore, dh.view({s.batch, s.rows, 2 * m}), w13, rows3(dx, s));
    }
    if (mask[1]) gemm<Backend>(GemmEpilogue::kAccumulate, mT(dh4.select(2, 0)), x3, weight3(dw1));
    if (mask[2]) gemm<Backend>(GemmEpilogue::kAccumulate, mT(dh4.select(2, 1)), x3, weight3(dw3));
    if (mask[3]) gemm<Backend>(GemmEpilogue::kAccumulate, mT(dy3), a, weight3(dw2));
  }
  if (wt == at::kFloat) return {dx, dw1, dw3, dw2};
  const auto to_weight_dtype = [&](const at::Tensor& g) {
    return g.defined() ? pack_rows<Backend>({g}, wt, false) : at::Tensor();
  };
  return {dx, to_weight_dtype(dw1), to_weight_dtype(dw3), to_weight_dtype(dw2)};
}

BwdResult mlp_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                      const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h, BwdMask mask) {
  const MlpShape s = check_mlp("swiglu_mlp_bwd", x, w1, w3, w2);
  check_bwd(grad_y, x, h, grad_h, s);
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) return mlp_bwd_device<SimBackend>(grad_y, x, w1, w3, w2, h, grad_h, s, mask);
#endif
  return mlp_bwd_cpu_kernels(grad_y, x, w1, w3, w2, h, grad_h, s, mask);
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
  const ops::SimBuffers buffers{{"h", hc},          {"da", dac},        {"grad_h", ghc}, {"cot_dh", cdc},
                                {"cot_a", cac},     {"cot_h", cot_h},   {"cot_da", cot_da}, {"dh", dh},
                                {"a", a}};
  launch(p);
  const at::ScalarType out = h.scalar_type();
  return {cot_h.to(out), cot_da.to(out), dh.to(out), a.to(out)};
}

GateBwdBwdResult gate_bwd_bwd_cpu(const at::Tensor& h, const at::Tensor& da, const OptTensor& grad_h,
                                  const at::Tensor& cot_dh, const at::Tensor& cot_a) {
#if defined(TTT_KERNELS_WITH_SIM)
  if (sim::config().enabled) {
    return gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a, h.scalar_type(),
                        [](const SwigluBwdBwdParams& p) { SimBackend::swiglu_bwd_bwd(p); });
  }
#endif
  return gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a, cpu_acc(h.scalar_type()),
                      [](const SwigluBwdBwdParams& p) { cpu::swiglu_bwd_bwd(p); });
}

// ---- CUDA -----------------------------------------------------------------------------------------------------------

#if defined(TTT_KERNELS_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor> mlp_fwd_cuda(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                                                const at::Tensor& w2) {
  const MlpShape s = check_mlp("swiglu_mlp_fwd", x, w1, w3, w2);
  const c10::cuda::CUDAGuard guard(x.device());
  const ops::NvtxRange range("swiglu_mlp_fwd", ' ', x.scalar_type(), " d", s.d, " m", s.m,
                             w1.dim() == 3 ? " batched" : "");
  return mlp_fwd_device<CudaBackend>(x, w1, w3, w2, s);
}

BwdResult mlp_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                       const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h, BwdMask mask) {
  const MlpShape s = check_mlp("swiglu_mlp_bwd", x, w1, w3, w2);
  check_bwd(grad_y, x, h, grad_h, s);
  const c10::cuda::CUDAGuard guard(x.device());
  const ops::NvtxRange range("swiglu_mlp_bwd", ' ', x.scalar_type(), " d", s.d, " m", s.m,
                             w1.dim() == 3 ? " batched" : "");
  return mlp_bwd_device<CudaBackend>(grad_y, x, w1, w3, w2, h, grad_h, s, mask);
}

GateBwdBwdResult gate_bwd_bwd_cuda(const at::Tensor& h, const at::Tensor& da, const OptTensor& grad_h,
                                   const at::Tensor& cot_dh, const at::Tensor& cot_a) {
  const c10::cuda::CUDAGuard guard(h.device());
  const ops::NvtxRange range("swiglu_gate_bwd_bwd", ' ', h.scalar_type(), " m", h.size(-1));
  return gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a, h.scalar_type(),
                      [](const SwigluBwdBwdParams& p) { CudaBackend::swiglu_bwd_bwd(p); });
}
#endif

// ---- autograd ------------------------------------------------------------------------------------------------------
// (csrc/ops/autograd.h says why these are C++.)

// swiglu_mlp_bwd through the dispatcher: its own autograd formula (SwigluMlpBwdFunction) records the double backward.
const auto& mlp_bwd_op() {
  static const auto op =
      ops::op_handle<BwdResult(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, const OptTensor&, BwdMask)>(
          "ttt_kernels::swiglu_mlp_bwd");
  return op;
}

// swiglu_mlp_fwd(x, w1, w3, w2) -> (y, h): the backward is swiglu_mlp_bwd, with h's cotangent (nonzero only in a
// double backward, which differentiates h) as its grad_h. Only the gradients the running backward pass needs are
// computed (output_mask): an inner gradient with respect to the fast weights skips the static MLP's.
struct SwigluMlpFwdFunction : torch::autograd::Function<SwigluMlpFwdFunction> {
  static ops::variable_list forward(ops::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1,
                                    const at::Tensor& w3, const at::Tensor& w2) {
    static const auto op = ops::op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>("ttt_kernels::swiglu_mlp_fwd");
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h] = op.call(x, w1, w3, w2);
    ctx->save_for_backward({x, w1, w3, w2, h});
    ctx->set_materialize_grads(false);
    return {y, h};
  }

  static ops::variable_list backward(ops::AutogradContext* ctx, ops::variable_list grads) {
    const BwdMask mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                       ctx->needs_input_grad(3)};
    if ((!grads[0].defined() && !grads[1].defined()) || !(mask[0] || mask[1] || mask[2] || mask[3])) {
      return ops::variable_list(4);
    }
    const ops::variable_list saved = ctx->get_saved_variables();  // x, w1, w3, w2, h
    const at::Tensor grad_y = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(saved[0]);
    auto [grad_x, grad_w1, grad_w3, grad_w2] =
        mlp_bwd_op().call(grad_y, saved[0], saved[1], saved[2], saved[3], saved[4], ops::contiguous_cotangent(grads[1]),
                          mask);
    return {grad_x, grad_w1, grad_w3, grad_w2};
  }
};

// The 4 tensors of (grad_x, grad_w1, grad_w3, grad_w2) from those output_mask selects, in order; undefined others.
// (The mask as bits: bit i for output i.)
int64_t mask_bits(BwdMask mask) { return int64_t{mask[0]} | mask[1] << 1 | mask[2] << 2 | mask[3] << 3; }

ops::variable_list in_mask_order(int64_t mask_bits, const ops::variable_list& selected) {
  ops::variable_list all(4);
  std::size_t next = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    if ((mask_bits >> i) & 1) all[i] = selected.at(next++);
  }
  return all;
}

// swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h?, output_mask) -> (grad_x, grad_w1, grad_w3, grad_w2): its
// vector-Jacobian product, for the meta-gradient through the inner step. With da = dy w2 and (dh1, dh3, a) =
// gate_bwd(h, da, e), e = grad_h (dh1 = da h3 silu'(h1) + e1, dh3 = da silu(h1) + e3, a = silu(h1) h3), the op
// computes dx = dh1 w1 + dh3 w3, dw1 = dh1^T x, dw3 = dh3^T x, dw2 = dy^T a. For cotangents U (u_x, u_w1, u_w3, u_w2):
//     c1 = U_x w1^T + x U_w1^T,  c3 = U_x w3^T + x U_w3^T,  ca = dy U_w2       (cotangents of dh1, dh3, a)
//     (cot_h, cot_da) = the gate's VJP of (c1, c3, ca)                          (swiglu_gate_bwd_bwd)
//     d dy = a U_w2^T + cot_da w2^T        d x  = dh1 U_w1 + dh3 U_w3
//     d w1 = dh1^T U_x                     d w3 = dh3^T U_x        d w2 = dy^T cot_da
//     d h  = cot_h                         d e  = (c1, c3)
// h's dependence on x, w1 and w3 is not differentiated here: d h flows into swiglu_mlp_fwd, whose backward adds it
// (as grad_h) to the gate's gradient. Written with differentiable ATen ops around swiglu_gate_bwd_bwd (which raises
// when differentiated: derivatives of third order are not implemented).
struct SwigluMlpBwdFunction : torch::autograd::Function<SwigluMlpBwdFunction> {
  static ops::variable_list forward(ops::AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& x,
                                    const at::Tensor& w1, const at::Tensor& w3, const at::Tensor& w2,
                                    const at::Tensor& h, const OptTensor& grad_h, BwdMask mask) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto [grad_x, grad_w1, grad_w3, grad_w2] = mlp_bwd_op().call(grad_y, x, w1, w3, w2, h, grad_h, mask);
    ctx->save_for_backward({grad_y, x, w1, w3, w2, h, grad_h.value_or(at::Tensor())});
    // A custom function's outputs are defined tensors: it returns those output_mask selects (mlp_bwd_autograd puts
    // them back in their places). Cotangents of outputs that do not reach the loss stay undefined (no zero tensors).
    ops::variable_list outputs;
    const std::array<at::Tensor, 4> all{grad_x, grad_w1, grad_w3, grad_w2};
    for (std::size_t i = 0; i < all.size(); ++i) {
      if (!mask[i]) continue;
      TORCH_INTERNAL_ASSERT(all[i].defined(), "swiglu_mlp_bwd: output ", i, " was asked for but not computed");
      outputs.push_back(all[i]);
    }
    ctx->saved_data["mask"] = mask_bits(mask);
    ctx->set_materialize_grads(false);
    return outputs;
  }

  static ops::variable_list backward(ops::AutogradContext* ctx, ops::variable_list cotangents) {
    static const auto gate_op = ops::op_handle<GateBwdBwdResult(const at::Tensor&, const at::Tensor&,
                                                                const OptTensor&, const at::Tensor&,
                                                                const at::Tensor&)>("ttt_kernels::swiglu_gate_bwd_bwd");
    const ops::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_y = saved[0], &x = saved[1], &w1 = saved[2], &w3 = saved[3], &w2 = saved[4],
                     &h = saved[5], &grad_h = saved[6];
    const ops::variable_list u = in_mask_order(ctx->saved_data["mask"].toInt(), cotangents);
    // Batches of matrices: x, grad_y [B, n, d] and weights [B, ...] (unbatched weights: B = 1, n = every row).
    // Sizes are SymInts: torch.compile traces this formula with symbolic shapes.
    const c10::SymInt d = x.sym_size(-1), m = w1.sym_size(-2), rows = x.sym_numel() / d;
    const c10::SymInt batch = w1.dim() == 3 ? w1.sym_size(0) : c10::SymInt(1), n = rows / batch;
    const std::array<c10::SymInt, 3> shape{batch, n, d}, hidden{batch, n, m}, gate{batch, n, 2 * m};
    const std::array<c10::SymInt, 3> gate_rows{rows, 2, m};
    const std::array<c10::SymInt, 2> hidden_rows{rows, m};
    const at::ScalarType dtype = at::promote_types(x.scalar_type(), w1.scalar_type());
    const auto in_dtype = [dtype](const at::Tensor& t) { return t.defined() ? t.to(dtype) : t; };
    // The sum of the defined terms, zeros of `size` if none is.
    const auto total = [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& like, c10::SymIntArrayRef size) {
      if (a.defined() && b.defined()) return a.add(b);
      return a.defined() ? a : b.defined() ? b : like.new_zeros_symint(size);
    };
    const at::Tensor dy = grad_y.reshape_symint(shape).to(dtype), xf = x.reshape_symint(shape).to(dtype);
    const at::Tensor w1f = w1.to(dtype), w3f = w3.to(dtype), w2f = w2.to(dtype);
    const at::Tensor ux = u[0].defined() ? u[0].reshape_symint(shape).to(dtype) : at::Tensor();
    const at::Tensor u1 = in_dtype(u[1]), u3 = in_dtype(u[2]), u2 = in_dtype(u[3]);

    // The gate's two halves as one [.., 2m] operand ([w1; w3] stacked, dh and cot_dh [rows, 2, m] as [B, n, 2m]):
    // one product where the formulas above have two.
    const at::Tensor w13 = at::cat({w1f, w3f}, -2);
    at::Tensor u13;
    if (u1.defined() || u3.defined()) {
      u13 = at::cat({u1.defined() ? u1 : at::zeros_like(w1f), u3.defined() ? u3 : at::zeros_like(w3f)}, -2);
    }
    const at::Tensor c13 = total(ux.defined() ? ux.matmul(w13.mT()) : at::Tensor(),
                                 u13.defined() ? xf.matmul(u13.mT()) : at::Tensor(), xf, gate);
    const at::Tensor cot_dh = c13.reshape_symint(gate_rows);
    const at::Tensor ca = u2.defined() ? dy.matmul(u2) : xf.new_zeros_symint(hidden);
    const auto [cot_h, cot_da_rows, dh, a_rows] =
        gate_op.call(h.to(dtype), dy.matmul(w2f).reshape_symint(hidden_rows), ops::optional_of(in_dtype(grad_h)),
                     cot_dh, ca.reshape_symint(hidden_rows));
    const at::Tensor dh13 = dh.reshape_symint(gate), cot_da = cot_da_rows.reshape_symint(hidden),
                     a = a_rows.reshape_symint(hidden);

    ops::variable_list result(8);  // grad_y, x, w1, w3, w2, h, grad_h, output_mask
    const at::Tensor d_dy =
        total(cot_da.matmul(w2f.mT()), u2.defined() ? a.matmul(u2.mT()) : at::Tensor(), xf, shape);
    result[0] = d_dy.reshape_symint(grad_y.sym_sizes()).to(grad_y.scalar_type());
    const at::Tensor d_x = u13.defined() ? dh13.matmul(u13) : xf.new_zeros_symint(shape);
    result[1] = d_x.reshape_symint(x.sym_sizes()).to(x.scalar_type());
    if (ux.defined()) {
      const at::Tensor d_w13 = dh13.mT().matmul(ux);  // [B, 2m, d]: (d w1; d w3)
      result[2] = d_w13.slice_symint(1, 0, m).reshape_symint(w1.sym_sizes()).to(w1.scalar_type());
      result[3] = d_w13.slice_symint(1, m).reshape_symint(w3.sym_sizes()).to(w3.scalar_type());
    }
    result[4] = dy.mT().matmul(cot_da).reshape_symint(w2.sym_sizes()).to(w2.scalar_type());
    result[5] = cot_h.to(h.scalar_type());
    if (grad_h.defined()) result[6] = cot_dh.transpose(1, 2).to(grad_h.scalar_type());
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> mlp_fwd_autograd(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                                                    const at::Tensor& w2) {
  const ops::variable_list out = SwigluMlpFwdFunction::apply(x, w1, w3, w2);
  return {out[0], out[1]};
}

BwdResult mlp_bwd_autograd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                           const at::Tensor& w2, const at::Tensor& h, const OptTensor& grad_h, BwdMask mask) {
  const ops::variable_list g =
      in_mask_order(mask_bits(mask), SwigluMlpBwdFunction::apply(grad_y, x, w1, w3, w2, h, grad_h, mask));
  return {g[0], g[1], g[2], g[3]};
}

}  // namespace
}  // namespace ttt

// The schemas and the CPU implementations; libttt_kernels_cuda.so compiles this file again for the CUDA ones.
#if !defined(TTT_KERNELS_CUDA_GLUE_ONLY)
TORCH_LIBRARY_FRAGMENT(ttt_kernels, m) {
  m.def("swiglu_mlp_fwd(Tensor x, Tensor w1, Tensor w3, Tensor w2) -> (Tensor y, Tensor h)");
  m.def(
      "swiglu_mlp_bwd(Tensor grad_y, Tensor x, Tensor w1, Tensor w3, Tensor w2, Tensor h, Tensor? grad_h, "
      "bool[4] output_mask=[True, True, True, True]) -> (Tensor grad_x, Tensor grad_w1, Tensor grad_w3, "
      "Tensor grad_w2)");
  m.def(
      "swiglu_gate_bwd_bwd(Tensor h, Tensor da, Tensor? grad_h, Tensor cot_dh, Tensor cot_a) -> "
      "(Tensor cot_h, Tensor cot_da, Tensor dh, Tensor a)");
}

TORCH_LIBRARY_IMPL(ttt_kernels, CPU, m) {
  m.impl("swiglu_mlp_fwd", &ttt::mlp_fwd_cpu);
  m.impl("swiglu_mlp_bwd", &ttt::mlp_bwd_cpu);
  m.impl("swiglu_gate_bwd_bwd", &ttt::gate_bwd_bwd_cpu);
}

TORCH_LIBRARY_IMPL(ttt_kernels, Autograd, m) {
  m.impl("swiglu_mlp_fwd", &ttt::mlp_fwd_autograd);
  m.impl("swiglu_mlp_bwd", &ttt::mlp_bwd_autograd);
}
#endif

#if defined(TTT_KERNELS_WITH_CUDA)
TORCH_LIBRARY_IMPL(ttt_kernels, CUDA, m) {
  m.impl("swiglu_mlp_fwd", &ttt::mlp_fwd_cuda);
  m.impl("swiglu_mlp_bwd", &ttt::mlp_bwd_cuda);
  m.impl("swiglu_gate_bwd_bwd", &ttt::gate_bwd_bwd_cuda);
}
#endif
