"""The dynamic SwiGLU MLP of TTT-E2E and its clipped SGD step, with first and second derivatives (docs/mlp.md).

Native ops (csrc/ops/mlp.cpp), rows = x.numel() / d:

- ``swiglu_mlp_fwd(x, w1, w3, w2) -> (y, h)``: h [rows, m, 2] holds the pre-activations (h1, h3) interleaved.
  Batched (each sequence its own fast weights): x [B, n, d], w1, w3 [B, m, d], w2 [B, d, m], rows = B n.
- ``swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h) -> (grad_x, grad_w1, grad_w3, grad_w2)``: grad_h (optional) is
  a gradient flowing into h directly; it is nonzero only in the double backward, which differentiates h.
- ``swiglu_gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a) -> (cot_h, cot_da, dh, a)``: the gate's fused element-wise
  double backward (and the recomputed dh [rows, 2, m] and a).
- ``clip_sgd_update(weights, grads, lr, max_norm, batched) -> (new_weights, norm)`` and the in-place
  ``clip_sgd_update_(weights, grads, lr, max_norm, batched) -> norm`` (batched: one norm per sequence, [B]).
- ``sgd_gemm_update_(weight, a, b, step)``: weight -= step * a^T b (fused into the GEMM epilogue on CUDA).

This module registers their fake tensor implementations (torch.compile) and autograd formulas:

- swiglu_mlp_fwd's backward is swiglu_mlp_bwd;
- swiglu_mlp_bwd's backward is composed of matrix products (torch.mm) and swiglu_gate_bwd_bwd; its gradient for h
  flows back into swiglu_mlp_fwd as grad_h, so gradients of gradients are exact (second order). Third-order
  derivatives raise;
- clip_sgd_update's backward goes through the norm (the clip scale depends on it) with differentiable torch ops, so
  it is differentiable again (second order with respect to the gradients).
"""

import math

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

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


def _check_clip_args(fn: str, weights, grads, lr, max_norm, batched) -> None:
    if not isinstance(weights, (list, tuple)) or not isinstance(grads, (list, tuple)):
        raise ValueError(f"{fn}: weights and grads must be lists of tensors")
    if len(weights) != len(grads):
        raise ValueError(f"{fn}: weights and grads must have the same length, got {len(weights)} and {len(grads)}")
    for i, (w, g) in enumerate(zip(weights, grads)):
        if not isinstance(w, torch.Tensor) or not isinstance(g, torch.Tensor):
            raise ValueError(f"{fn}: weights[{i}] and grads[{i}] must be tensors")
        if w.shape != g.shape:
            raise ValueError(
                f"{fn}: grads[{i}] must have the shape of weights[{i}] {tuple(w.shape)}, got {tuple(g.shape)}"
            )
        if w.dtype not in (torch.float32, torch.float64) or g.dtype != w.dtype or w.dtype != weights[0].dtype:
            raise ValueError(f"{fn}: weights and grads must all be float32 or all float64, got {w.dtype}, {g.dtype}")
        if w.device != weights[0].device or g.device != weights[0].device:
            raise ValueError(f"{fn}: weights and grads must be on one device")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        raise ValueError(f"{fn}: lr must be a finite number, got {lr!r}")
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ValueError(f"{fn}: max_norm must be a number > 0 (inf: no clipping), got {max_norm!r}")
    if not isinstance(batched, bool):
        raise ValueError(f"{fn}: batched must be a bool, got {batched!r}")
    if batched:
        if not weights or weights[0].dim() == 0 or weights[0].shape[0] == 0:
            raise ValueError(f"{fn}: batched needs weights with a leading batch dimension >= 1")
        for i, w in enumerate(weights):
            if w.dim() == 0 or w.shape[0] != weights[0].shape[0]:
                raise ValueError(
                    f"{fn}: batched weights must share the leading dimension of weights[0] ({weights[0].shape[0]}), "
                    f"got weights[{i}] of shape {tuple(w.shape)}"
                )


def clip_sgd_update(
    weights, grads, lr: float = 1.0, max_norm: float = 1.0, *, batched: bool = False
) -> list[torch.Tensor]:
    """``[w - lr * scale * g for w, g in zip(weights, grads)]``, the TTT inner step over all fast weights at once.

    scale = 1 if norm < max_norm else max_norm / norm, with norm the global L2 norm of all grads
    (optax.clip_by_global_norm). Zero gradients give norm 0 and scale 1 (no NaN, also in the derivatives, where
    optax's select yields NaN). Differentiable in weights and grads, through the norm, twice.

    Args:
        weights, grads: lists of tensors of pairwise equal shapes, all float32 or all float64, on one device.
        lr: the SGD learning rate (finite). max_norm: > 0; math.inf disables clipping.
        batched: every tensor has a leading batch dimension B (the fast weights of B sequences); sequence b is
            clipped by the global norm of its own gradients [g[b] for g in grads], computed on the device.
    """
    _check_clip_args("clip_sgd_update", weights, grads, lr, max_norm, batched)
    if not weights:  # nothing to update (the native op needs a tensor to dispatch on)
        return []
    new_weights, _ = _ops.clip_sgd_update(
        [w.contiguous() for w in weights], [g.contiguous() for g in grads], float(lr), float(max_norm), batched
    )
    return new_weights


def clip_sgd_update_(weights, grads, lr: float = 1.0, max_norm: float = 1.0, *, batched: bool = False) -> torch.Tensor:
    """In-place :func:`clip_sgd_update` (inference): one pass over the grads for the norm, one pass for the update.

    The weights must be contiguous; they are updated without autograd tracking. Returns the global norm (a 0-d
    tensor in the weights' dtype, on their device; [B], one per sequence, when ``batched``).
    """
    _check_clip_args("clip_sgd_update_", weights, grads, lr, max_norm, batched)
    for i, w in enumerate(weights):
        if not w.is_contiguous():
            raise ValueError(f"clip_sgd_update_: weights[{i}] must be contiguous (it is updated in place)")
    if not weights:  # nothing to update: the norm of no gradients
        return torch.zeros(())
    with torch.no_grad():
        return _ops.clip_sgd_update_(
            list(weights), [g.contiguous() for g in grads], float(lr), float(max_norm), batched
        )


def sgd_gemm_update_(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, step: torch.Tensor) -> None:
    """``weight -= step * a^T b`` in place, with the update fused into the GEMM's epilogue on CUDA.

    The SGD step of one fast weight whose gradient is a product (e.g. dL/dw2 = dy^T a) when the step is known
    before the gradient: the gradient is never written to memory. step is a one-element float32 tensor on weight's
    device (read on the device: no host synchronization on CUDA).

    Args:
        weight: [M, N] float32 (float64 allowed on the CPU), contiguous.
        a: [K, M], b: [K, N], one float dtype (bfloat16 / float16 on CUDA, with M, N multiples of 8).
    """
    for name, t in (("weight", weight), ("a", a), ("b", b), ("step", step)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"sgd_gemm_update_: {name} must be a tensor, got {type(t).__name__}")
    with torch.no_grad():
        _ops.sgd_gemm_update_(weight, a, b, step)


# ---- fake tensors ---------------------------------------------------------------------------------------------------


@torch.library.register_fake("ttt_kernels::swiglu_mlp_fwd")
def _swiglu_mlp_fwd_fake(x, w1, w3, w2):
    rows = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((rows, w1.shape[-2], 2))


@torch.library.register_fake("ttt_kernels::swiglu_mlp_bwd")
def _swiglu_mlp_bwd_fake(grad_y, x, w1, w3, w2, h, grad_h):
    return x.new_empty(x.shape), w1.new_empty(w1.shape), w3.new_empty(w3.shape), w2.new_empty(w2.shape)


@torch.library.register_fake("ttt_kernels::swiglu_gate_bwd_bwd")
def _swiglu_gate_bwd_bwd_fake(h, da, grad_h, cot_dh, cot_a):
    return h.new_empty(h.shape), da.new_empty(da.shape), h.new_empty(cot_dh.shape), da.new_empty(da.shape)


def _clip_norm_fake(weights, batched):
    if not weights:
        return torch.empty((), dtype=torch.float32)
    return weights[0].new_empty(weights[0].shape[:1] if batched else ())


@torch.library.register_fake("ttt_kernels::clip_sgd_update")
def _clip_sgd_update_fake(weights, grads, lr, max_norm, batched=False):
    return [w.new_empty(w.shape) for w in weights], _clip_norm_fake(weights, batched)


@torch.library.register_fake("ttt_kernels::clip_sgd_update_")
def _clip_sgd_update_inplace_fake(weights, grads, lr, max_norm, batched=False):
    return _clip_norm_fake(weights, batched)


@torch.library.register_fake("ttt_kernels::sgd_gemm_update_")
def _sgd_gemm_update_fake(weight, a, b, step):
    return None


@torch.library.register_fake("ttt_kernels::_mlp_gemm")
def _mlp_gemm_fake(a, b, d, c, t, epilogue, alpha, beta, scale):
    return None


# ---- autograd: swiglu_mlp -------------------------------------------------------------------------------------------


def _fwd_setup_context(ctx, inputs, output):
    x, w1, w3, w2 = inputs
    _, h = output
    ctx.save_for_backward(x, w1, w3, w2, h)
    ctx.set_materialize_grads(False)


def _fwd_backward(ctx, grad_y, grad_h):
    x, w1, w3, w2, h = ctx.saved_tensors
    if grad_y is None and grad_h is None:
        return None, None, None, None
    grad_y = torch.zeros_like(x) if grad_y is None else grad_y.contiguous()
    grad_h = None if grad_h is None else grad_h.contiguous()
    return _ops.swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h)


def _bwd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
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
    )


def _gate_bwd_bwd_backward(ctx, *grads):
    raise NotImplementedError(
        "ttt_kernels.ops.swiglu_mlp: derivatives of third order are not implemented (swiglu_gate_bwd_bwd has no "
        "backward)"
    )


torch.library.register_autograd("ttt_kernels::swiglu_mlp_fwd", _fwd_backward, setup_context=_fwd_setup_context)
torch.library.register_autograd("ttt_kernels::swiglu_mlp_bwd", _bwd_backward, setup_context=_bwd_setup_context)
torch.library.register_autograd("ttt_kernels::swiglu_gate_bwd_bwd", _gate_bwd_bwd_backward)


# ---- autograd: clip_sgd_update --------------------------------------------------------------------------------------


def _clip_setup_context(ctx, inputs, output):
    _, grads, lr, max_norm, *batched = inputs
    _, norm = output
    ctx.save_for_backward(norm, *grads)
    ctx.lr, ctx.max_norm, ctx.batched = lr, max_norm, bool(batched and batched[0])
    ctx.mark_non_differentiable(norm)


def _clip_backward(ctx, grad_new_weights, _grad_norm):
    """new_w = w - lr s g with s = 1 if n < c else c / n, n = sqrt(sum over all grads of g^2), c = max_norm:

        dL/dw = U,   dL/dg = -lr s (U - k g),   k = <U, g> / n^2 when clipped, else 0
    (ds/dg = -(s / n^2) g when clipped). Written with differentiable torch ops, with the branch taken as in the
    forward and n^2 recomputed from the grads, so that it differentiates again (in g and U). Denominators are
    replaced by 1 on the unclipped branch (a value of the branch not taken: zero gradients yield no NaN, not even in
    the second derivative, and a huge max_norm such as 1e20 no float32 overflow).
    Batched, all of this holds per sequence: n, s and k are [B], summed over each tensor's other dimensions.
    """
    norm, *grads = ctx.saved_tensors
    lr, c = ctx.lr, ctx.max_norm
    us = [torch.zeros_like(g) if u is None else u for u, g in zip(grad_new_weights, grads)]
    # One None per non-tensor input as the op was called: a default batched=False is not among them.
    none = (None,) * (len(ctx.needs_input_grad) - 2)
    if math.isinf(c) or not grads:
        return us, [-lr * u for u in us], *none

    def per_sequence_sum(t):  # [B] when batched, 0-d otherwise
        return t.flatten(1).sum(1) if ctx.batched else t.sum()

    def per_element(v, g):  # [B] -> broadcastable to g
        return v.view(-1, *(1,) * (g.dim() - 1)) if ctx.batched else v

    clipped = ~(norm < c)  # NaN norms take the clipped branch, as in the forward
    n2 = sum(per_sequence_sum(g * g) for g in grads)
    denom = torch.where(clipped, n2, torch.ones_like(n2))
    s = torch.where(clipped, c * torch.rsqrt(denom), torch.ones_like(denom))
    dot = sum(per_sequence_sum(u * g) for u, g in zip(us, grads))
    k = torch.where(clipped, dot / denom, torch.zeros_like(denom))
    return us, [-lr * per_element(s, g) * (u - per_element(k, g) * g) for u, g in zip(us, grads)], *none


torch.library.register_autograd("ttt_kernels::clip_sgd_update", _clip_backward, setup_context=_clip_setup_context)
