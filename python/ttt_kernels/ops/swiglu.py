"""The dynamic SwiGLU MLP of TTT-E2E, with first and second derivatives (docs/mlp.md).

Native ops (csrc/ops/swiglu.cpp), rows = x.numel() / d:

- ``swiglu_mlp_fwd(x, w1, w3, w2) -> (y, h)``: h [rows, m, 2] holds the pre-activations (h1, h3) interleaved.
  Batched (each sequence its own fast weights): x [B, n, d], w1, w3 [B, m, d], w2 [B, d, m], rows = B n.
- ``swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h, output_mask) -> (grad_x, grad_w1, grad_w3, grad_w2)``: grad_h
  (optional) is a gradient flowing into h directly; it is nonzero only in the double backward, which differentiates
  h. output_mask (4 bools, default all true) selects the gradients computed: the others are None, their GEMMs
  skipped (the autograd formula passes which inputs need a gradient).
- ``swiglu_gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a) -> (cot_h, cot_da, dh, a)``: the gate's fused element-wise
  double backward (and the recomputed dh [rows, 2, m] and a).

This module registers their fake tensor implementations (torch.compile) and autograd formulas:

- swiglu_mlp_fwd's backward is swiglu_mlp_bwd;
- swiglu_mlp_bwd's backward is composed of matrix products (torch.mm) and swiglu_gate_bwd_bwd; its gradient for h
  flows back into swiglu_mlp_fwd as grad_h, so gradients of gradients are exact (second order). Third-order
  derivatives raise.
"""

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

from ._autograd import engine_needs

_ops = torch.ops.ttt_kernels

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def swiglu_mlp(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``(silu(x w1^T) * (x w3^T)) w2^T``, the SwiGLU MLP with torch.nn.Linear weights.

    Args:
        x: [..., d] float32, float64, bfloat16 or float16; [B, n, d] with batched weights.
        w1, w3: [m, d] (gate and up projection); w2: [d, m] (down projection). x's dtype, or float32 when x is
            bfloat16 / float16 (float32 master weights; their gradients are then float32). Batched: w1, w3
            [B, m, d] and w2 [B, d, m], sequence b's MLP applied to x[b] (the fast weights of B sequences, one
            batched GEMM per projection).

    Returns y [..., d] in x's dtype. Differentiable twice in all inputs. CPU: float32 math (float64 for float64).
    CUDA: bfloat16 / float16 x with d and m multiples of 8, tensor-core GEMMs with float32 accumulation.
    """
    tensors = {"x": x, "w1": w1, "w3": w3, "w2": w2}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"swiglu_mlp: {name} must be a tensor, got {type(t).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"swiglu_mlp: x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"swiglu_mlp: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    batch = (w1.shape[0],) if w1.dim() == 3 else ()
    if batch and (x.dim() != 3 or x.shape[0] != batch[0]):
        raise ValueError(
            f"swiglu_mlp: with batched weights (w1 {tuple(w1.shape)}) x must have shape ({batch[0]}, n, d), "
            f"got {tuple(x.shape)}"
        )
    if w1.dim() - len(batch) != 2 or w1.shape[-1] != d or w1.shape[-2] == 0:
        raise ValueError(
            f"swiglu_mlp: w1 must have shape ({'B, ' if batch else ''}m, {d}) with m > 0, got {tuple(w1.shape)}"
        )
    m = w1.shape[-2]
    if w3.shape != w1.shape:
        raise ValueError(f"swiglu_mlp: w3 must have w1's shape {tuple(w1.shape)}, got {tuple(w3.shape)}")
    if w2.shape != (*batch, d, m):
        raise ValueError(f"swiglu_mlp: w2 must have shape {(*batch, d, m)}, got {tuple(w2.shape)}")
    allowed = (x.dtype, torch.float32) if x.dtype in (torch.bfloat16, torch.float16) else (x.dtype,)
    for name in ("w1", "w3", "w2"):
        w = tensors[name]
        if w.dtype != w1.dtype or w.dtype not in allowed:
            raise ValueError(
                f"swiglu_mlp: w1, w3 and w2 must share one dtype in {[str(t) for t in allowed]}, got {name} {w.dtype}"
            )
        if w.device != x.device:
            raise ValueError(f"swiglu_mlp: {name} must be on x's device {x.device}, got {w.device}")
    y, _ = _ops.swiglu_mlp_fwd(x.contiguous(), w1.contiguous(), w3.contiguous(), w2.contiguous())
    return y


# ---- fake tensors ---------------------------------------------------------------------------------------------------


@torch.library.register_fake("ttt_kernels::swiglu_mlp_fwd")
def _swiglu_mlp_fwd_fake(x, w1, w3, w2):
    rows = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((rows, w1.shape[-2], 2))


@torch.library.register_fake("ttt_kernels::swiglu_mlp_bwd")
def _swiglu_mlp_bwd_fake(grad_y, x, w1, w3, w2, h, grad_h, output_mask=(True, True, True, True)):
    return tuple(t.new_empty(t.shape) if keep else None for t, keep in zip((x, w1, w3, w2), output_mask))


@torch.library.register_fake("ttt_kernels::swiglu_gate_bwd_bwd")
def _swiglu_gate_bwd_bwd_fake(h, da, grad_h, cot_dh, cot_a):
    return h.new_empty(h.shape), da.new_empty(da.shape), h.new_empty(cot_dh.shape), da.new_empty(da.shape)


# ---- autograd: swiglu_mlp -------------------------------------------------------------------------------------------


def _fwd_setup_context(ctx, inputs, output):
    x, w1, w3, w2 = inputs
    _, h = output
    ctx.save_for_backward(x, w1, w3, w2, h)
    ctx.set_materialize_grads(False)


def _fwd_backward(ctx, grad_y, grad_h):
    x, w1, w3, w2, h = ctx.saved_tensors
    mask = engine_needs(ctx)
    if (grad_y is None and grad_h is None) or not any(mask):
        return None, None, None, None
    grad_y = torch.zeros_like(x) if grad_y is None else grad_y.contiguous()
    grad_h = None if grad_h is None else grad_h.contiguous()
    return _ops.swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h, mask)


def _bwd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])  # not output_mask: the outputs it leaves out are None, without cotangents
    ctx.set_materialize_grads(False)


def _bwd_backward(ctx, u_x, u_w1, u_w3, u_w2):
    """Vector-Jacobian product of (dx, dw1, dw3, dw2) = swiglu_mlp_bwd(dy, x, w1, w3, w2, h, e), e = grad_h.

    With da = dy w2 and (dh1, dh3, a) = gate_bwd(h, da, e) (dh1 = da h3 silu'(h1) + e1, dh3 = da silu(h1) + e3,
    a = silu(h1) h3), the op computes dx = dh1 w1 + dh3 w3, dw1 = dh1^T x, dw3 = dh3^T x, dw2 = dy^T a. For
    cotangents U (u_x, u_w1, u_w3, u_w2):
        c1 = U_x w1^T + x U_w1^T,  c3 = U_x w3^T + x U_w3^T,  ca = dy U_w2       (cotangents of dh1, dh3, a)
        (cot_h, cot_da) = the gate's VJP of (c1, c3, ca)                          (swiglu_gate_bwd_bwd)
        d dy = a U_w2^T + cot_da w2^T        d x  = dh1 U_w1 + dh3 U_w3
        d w1 = dh1^T U_x                     d w3 = dh3^T U_x        d w2 = dy^T cot_da
        d h  = cot_h                         d e  = (c1, c3)
    h's dependence on x, w1 and w3 is not differentiated here: d h flows into swiglu_mlp_fwd, whose backward adds it
    (as grad_h) to the gate's gradient.
    """
    grad_y, x, w1, w3, w2, h, grad_h = ctx.saved_tensors
    # Batches of matrices: x, grad_y [B, n, d] and weights [B, ...] (unbatched weights: B = 1, n = every row).
    batched = w1.dim() == 3
    d, m = x.shape[-1], w1.shape[-2]
    rows = x.numel() // d
    shape = (w1.shape[0], rows // w1.shape[0], d) if batched else (1, rows, d)
    dtype = torch.promote_types(x.dtype, w1.dtype)
    dy = grad_y.reshape(shape).to(dtype)
    xf = x.reshape(shape).to(dtype)
    w1f, w3f, w2f = (w.to(dtype) for w in (w1, w3, w2))
    ux = None if u_x is None else u_x.reshape(shape).to(dtype)
    u1, u3, u2 = (None if u is None else u.to(dtype) for u in (u_w1, u_w3, u_w2))

    def total(terms, shape):
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else xf.new_zeros(shape)

    def weight_grad(g, w):  # [B, r, c] (B = 1 for unbatched weights) -> w's shape and dtype
        return g.reshape(w.shape).to(w.dtype)

    # The gate's two halves as one [.., 2m] operand ([w1; w3] stacked, dh and cot_dh [rows, 2, m] as [B, n, 2m]):
    # one product where the formulas above have two.
    hidden = (*shape[:2], m)
    w13 = torch.cat((w1f, w3f), -2)
    u13 = None
    if u1 is not None or u3 is not None:
        u13 = torch.cat(tuple(torch.zeros_like(w1f) if u is None else u for u in (u1, u3)), -2)
    c13 = total([None if ux is None else ux @ w13.mT, None if u13 is None else xf @ u13.mT], (*shape[:2], 2 * m))
    cot_dh = c13.reshape(rows, 2, m)
    ca = xf.new_zeros(hidden) if u2 is None else dy @ u2
    cot_h, cot_da, dh, a = _ops.swiglu_gate_bwd_bwd(
        h.to(dtype),
        (dy @ w2f).reshape(rows, m),
        None if grad_h is None else grad_h.to(dtype),
        cot_dh,
        ca.reshape(rows, m),
    )
    dh13 = dh.reshape(*shape[:2], 2 * m)
    cot_da, a = cot_da.reshape(hidden), a.reshape(hidden)
    d_dy = total([cot_da @ w2f.mT, None if u2 is None else a @ u2.mT], shape)
    d_x = xf.new_zeros(shape) if u13 is None else dh13 @ u13
    d_w13 = None if ux is None else dh13.mT @ ux  # [B, 2m, d]: (d w1; d w3)
    d_w1 = None if ux is None else weight_grad(d_w13[:, :m], w1)
    d_w3 = None if ux is None else weight_grad(d_w13[:, m:], w3)
    d_w2 = weight_grad(dy.mT @ cot_da, w2)
    d_e = None if grad_h is None else cot_dh.transpose(1, 2).to(grad_h.dtype)
    return (
        d_dy.reshape(grad_y.shape).to(grad_y.dtype),
        d_x.reshape(x.shape).to(x.dtype),
        d_w1,
        d_w3,
        d_w2,
        cot_h.to(h.dtype),
        d_e,
        *[None] * (len(ctx.needs_input_grad) - 7),  # output_mask, when given
    )


def _gate_bwd_bwd_backward(ctx, *grads):
    raise NotImplementedError(
        "ttt_kernels.ops.swiglu_mlp: derivatives of third order are not implemented (swiglu_gate_bwd_bwd has no "
        "backward)"
    )


torch.library.register_autograd("ttt_kernels::swiglu_mlp_fwd", _fwd_backward, setup_context=_fwd_setup_context)
torch.library.register_autograd("ttt_kernels::swiglu_mlp_bwd", _bwd_backward, setup_context=_bwd_setup_context)
torch.library.register_autograd("ttt_kernels::swiglu_gate_bwd_bwd", _gate_bwd_bwd_backward)
