"""Pure PyTorch clipped SGD step (optax.clip_by_global_norm), the reference of :mod:`ttt_kernels.ops.clip_sgd`."""

import torch


def clip_sgd_update(weights, grads, lr: float, max_norm: float, *, batched: bool = False) -> list[torch.Tensor]:
    """``w - lr * clip(g)`` for every pair, clipped by the global L2 norm of all grads as optax.clip_by_global_norm:

    ``g if norm < max_norm else g / norm * max_norm`` (a select, so zero gradients pass through unchanged).
    ``batched``: tensors [B, ...], sequence b clipped by the norm of its own gradients.
    """

    def squares(g):  # [B] when batched, else 0-d
        return (g * g).flatten(1).sum(1) if batched else (g * g).sum()

    def shaped(v, g):  # per-sequence values broadcast against g
        return v.view(-1, *(1,) * (g.dim() - 1)) if batched else v

    norm = torch.sqrt(sum(squares(g) for g in grads))
    trigger = norm < max_norm
    return [w - lr * torch.where(shaped(trigger, g), g, g / shaped(norm, g) * max_norm) for w, g in zip(weights, grads)]
