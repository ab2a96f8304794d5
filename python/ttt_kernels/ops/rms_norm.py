"""Fused RMSNorm with first and second derivatives.

The native ops (csrc/ops/rms_norm.cpp) are ``torch.ops.ttt_kernels.rms_norm_fwd(x, weight, eps, residual=None,
rope=None) -> (out, rstd)`` (out = [residual +] the norm, or RoPE(the norm)),
``rms_norm_bwd(grad_out, x, weight, rstd, rope=None) -> (grad_x, grad_weight)`` and the fused double backward
``rms_norm_bwd_bwd(grad_out, x, weight, rstd, grad_grad_x, grad_grad_weight, rope=None) -> (grad_grad_out, grad_x,
grad_weight)``, with rstd = 1 / sqrt(mean(x^2) + eps) per row ([rows], float32, float64 for float64 x). Their autograd
formulas: rms_norm_fwd's backward is rms_norm_bwd and rms_norm_bwd's is rms_norm_bwd_bwd (both C++,
csrc/ops/rms_norm.cpp); rms_norm_bwd_bwd's, registered here with the fake tensor implementations (for torch.compile),
differentiates the same closed form written with differentiable torch ops (_bwd_bwd_composite), so derivatives of
every order are exact.
"""

import math

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

_ops = torch.ops.ttt_kernels


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    rope: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2, -1) + eps)`` over the last dimension of x, plus ``residual`` if given, or
    rotated by ``rope`` if given.

    Args:
        x: [..., d] float32, float64, bfloat16 or float16 ([..., n, heads, d] with rope).
        weight: [d], x's dtype and device.
        eps: a finite number > 0.
        residual: None, or x's shape, dtype and device: a post-norm residual connection ``residual + norm(x)`` in
            one op (the sum is rounded once, from float32).
        rope: None, or [n, d / 2, 2] (cos, sin) float32 (float64 for float64 x) on x's device: rotary position
            embeddings of a QK-norm in the same op. Pair (2i, 2i + 1) of the norm at position p (x's dimension -3)
            becomes (a cos - b sin, a sin + b cos) with (cos, sin) = rope[p, i] (the interleaved RoPE of complex
            multiplication). A constant: it gets no gradient. Not with residual.

    Math runs in float32 (float64 for float64 x); the result has x's dtype. Differentiable to any order in x,
    weight and residual.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise ValueError(f"rms_norm: x and weight must be tensors, got {type(x).__name__}, {type(weight).__name__}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"rms_norm: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(
            f"rms_norm: weight must match x's dtype and device ({x.dtype}, {x.device}), "
            f"got ({weight.dtype}, {weight.device})"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"rms_norm: eps must be a finite number > 0, got {eps!r}")
    if rope is not None:
        _check_rope(x, rope, residual)
        return _ops.rms_norm_fwd(x.contiguous(), weight.contiguous(), float(eps), rope=rope)[0]
    if residual is None:
        return _ops.rms_norm_fwd(x.contiguous(), weight.contiguous(), float(eps))[0]
    if not isinstance(residual, torch.Tensor):
        raise ValueError(f"rms_norm: residual must be None or a tensor, got {type(residual).__name__}")
    if (residual.shape, residual.dtype, residual.device) != (x.shape, x.dtype, x.device):
        raise ValueError(
            f"rms_norm: residual must match x's shape, dtype and device ({tuple(x.shape)}, {x.dtype}, {x.device}), "
            f"got ({tuple(residual.shape)}, {residual.dtype}, {residual.device})"
        )
    return _ops.rms_norm_fwd(x.contiguous(), weight.contiguous(), float(eps), residual.contiguous())[0]


def _check_rope(x: torch.Tensor, rope: torch.Tensor, residual) -> None:
    if not isinstance(rope, torch.Tensor):
        raise ValueError(f"rms_norm: rope must be None or a tensor, got {type(rope).__name__}")
    if residual is not None:
        raise ValueError("rms_norm: residual and rope cannot be combined")
    if x.dim() < 3 or x.shape[-1] % 2:
        raise ValueError(f"rms_norm: with rope, x must be [..., n, heads, d] with d even, got {tuple(x.shape)}")
    expected = (x.shape[-3], x.shape[-1] // 2, 2)
    if rope.shape != expected or rope.dtype != _rstd_dtype(x.dtype) or rope.device != x.device:
        raise ValueError(
            f"rms_norm: rope must have shape {expected}, dtype {_rstd_dtype(x.dtype)} and x's device {x.device}, "
            f"got {tuple(rope.shape)}, {rope.dtype}, {rope.device}"
        )
    if rope.requires_grad:
        raise ValueError("rms_norm: rope is a constant table (it gets no gradient); pass it detached")


def _rstd_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("ttt_kernels::rms_norm_fwd")
def _rms_norm_fwd_fake(x, weight, eps, residual=None, rope=None):
    return x.new_empty(x.shape), x.new_empty(x.numel() // x.shape[-1], dtype=_rstd_dtype(x.dtype))


@torch.library.register_fake("ttt_kernels::rms_norm_bwd")
def _rms_norm_bwd_fake(grad_out, x, weight, rstd, rope=None):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


@torch.library.register_fake("ttt_kernels::rms_norm_bwd_bwd")
def _rms_norm_bwd_bwd_fake(grad_out, x, weight, rstd, grad_grad_x, grad_grad_weight, rope=None):
    return x.new_empty(x.shape), x.new_empty(x.shape), weight.new_empty(weight.shape)


def _rstd_of(x: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """rstd [..., 1] as a differentiable function of x [..., d] (float32/64): 1 / sqrt(mean(x^2) + eps).

    eps is not an input of rms_norm_bwd; it is recovered from rstd (detached), so the value is exactly rstd and the
    derivatives of every order in x are those of the forward's rstd.
    """
    rstd = rstd.reshape(*x.shape[:-1], 1)
    mean_sq = x.square().mean(-1, keepdim=True)
    eps = (rstd.reciprocal().square() - mean_sq).detach()
    r = torch.rsqrt(mean_sq + eps)
    return rstd + (r - r.detach())


def _rotate(t: torch.Tensor, rope: torch.Tensor, inverse: bool) -> torch.Tensor:
    """R t (or R^T t) for t [..., n, heads, d] with differentiable ops: pair (a, b) at position p turned by
    rope[p] = (cos, sin) per pair (the kernels' RoPE)."""
    cos, sin = rope[:, None, :, 0], rope[:, None, :, 1]  # [n, 1, d / 2]
    if inverse:
        sin = -sin
    a, b = t[..., 0::2], t[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


def _bwd_bwd_composite(grad_out, x, weight, rstd, u, v, rope=None):
    """Vector-Jacobian product of (grad_x, grad_weight) = rms_norm_bwd(g, x, w, rstd) with differentiable torch ops
    (what rms_norm_bwd_bwd computes fused; its own backward differentiates this), per row of d elements:

        grad_x = r a - (r^3 s / d) x,  a = g w,  s = sum(a x),  r = rstd(x)
        grad_weight = sum over rows of g x r
    With upstream U (for grad_x, [..., d]) and V (for grad_weight, [d]), t = sum(U x), q = sum(U a), p = sum(V g x),
    h = r U - (r^3 t / d) x:
        dg = w h + r V x
        dw = sum over rows of g h
        dx = ((3 r^5 s t / d^2) - (r^3 / d) (q + p)) x - (r^3 t / d) a - (r^3 s / d) U + r V g
    (dr/dx = -r^3 x / d). rstd gets no gradient: its dependence on x is part of dx. With RoPE R, g is R^T grad_out
    and dg is R applied to the formula's. Returns (dg, dx, dw).
    """
    d = x.shape[-1]
    acc = rstd.dtype
    xf, gf, wf = x.to(acc), grad_out.to(acc), weight.to(acc)
    if rope is not None:
        gf = _rotate(gf, rope, inverse=True)
    u = torch.zeros_like(xf) if u is None else u.to(acc)
    v = torch.zeros_like(wf) if v is None else v.to(acc)

    r = _rstd_of(xf, rstd)
    r3_d = r**3 / d
    a = gf * wf
    s = (a * xf).sum(-1, keepdim=True)
    t = (u * xf).sum(-1, keepdim=True)
    q = (u * a).sum(-1, keepdim=True)
    p = (v * gf * xf).sum(-1, keepdim=True)
    h = r * u - (r3_d * t) * xf

    dg = wf * h + r * v * xf
    if rope is not None:
        dg = _rotate(dg, rope, inverse=False)
    dw = (gf * h).reshape(-1, d).sum(0)
    dx = (3 * r3_d * r * r * s * t / d - r3_d * (q + p)) * xf - (r3_d * t) * a - (r3_d * s) * u + r * v * gf
    return dg.to(grad_out.dtype), dx.to(x.dtype), dw.to(weight.dtype)


def _rms_norm_bwd_bwd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.rope = inputs[6] if len(inputs) > 6 else None
    ctx.set_materialize_grads(False)


def _rms_norm_bwd_bwd_backward(ctx, grad_dg, grad_dx, grad_dw):
    """Third order: the VJP of _bwd_bwd_composite, with a graph when the caller asks for one (every order exact)."""
    inputs = (*ctx.saved_tensors, ctx.rope)
    create_graph = torch.is_grad_enabled()
    wrt = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    grads = [None] * len(ctx.needs_input_grad)
    pairs = [(o, c) for o, c in zip(range(3), (grad_dg, grad_dx, grad_dw)) if c is not None]
    if wrt and pairs:
        with torch.enable_grad():
            outs = _bwd_bwd_composite(*inputs)
            found = torch.autograd.grad(
                [outs[o] for o, _ in pairs],
                [inputs[i] for i in wrt],
                [c for _, c in pairs],
                create_graph=create_graph,
                allow_unused=True,
            )
        for i, g in zip(wrt, found):
            grads[i] = g
    return tuple(grads)


torch.library.register_autograd(
    "ttt_kernels::rms_norm_bwd_bwd", _rms_norm_bwd_bwd_backward, setup_context=_rms_norm_bwd_bwd_setup_context
)
