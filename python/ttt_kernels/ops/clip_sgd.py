"""The clipped SGD step of TTT-E2E's fast weights, differentiable twice (docs/mlp.md).

Native ops (csrc/ops/clip_sgd.cpp):

- ``clip_sgd_update(weights, grads, lr, max_norm, batched) -> (new_weights, norm)`` and the in-place
  ``clip_sgd_update_(weights, grads, lr, max_norm, batched) -> norm`` (batched: one norm per sequence, [B]).

This module registers their fake tensor implementations (torch.compile) and clip_sgd_update's autograd formula: its
backward goes through the norm (the clip scale depends on it) with differentiable torch ops, so it is differentiable
again (second order with respect to the gradients).
"""

import math

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

_ops = torch.ops.ttt_kernels


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


# ---- fake tensors ---------------------------------------------------------------------------------------------------


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


# ---- autograd: clip_sgd_update --------------------------------------------------------------------------------------


def _clip_setup_context(ctx, inputs, output):
    _, grads, lr, max_norm, *batched = inputs
    _, norm = output
    ctx.save_for_backward(norm, *grads)
    ctx.lr, ctx.max_norm, ctx.batched = lr, max_norm, bool(batched and batched[0])
    ctx.mark_non_differentiable(norm)
    ctx.set_materialize_grads(False)  # the norm's cotangent (and unused weights') arrive as None: no zero tensors


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
