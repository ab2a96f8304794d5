"""The clipped SGD step of TTT-E2E's fast weights, differentiable twice (docs/mlp.md).

Native ops (csrc/ops/clip_sgd.cpp):

- ``clip_sgd_update(weights, grads, lr, max_norm, batched) -> (new_weights, norm)`` and the in-place
  ``clip_sgd_update_(weights, grads, lr, max_norm, batched) -> norm`` (batched: one norm per sequence, [B]).

This module registers their fake tensor implementations (torch.compile). clip_sgd_update's autograd formula is C++
(csrc/ops/clip_sgd.cpp): its backward goes through the norm (the clip scale depends on it) with differentiable ATen
ops, so it is differentiable again (second order with respect to the gradients).
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
