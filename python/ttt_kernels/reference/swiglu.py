"""Pure PyTorch dynamic SwiGLU MLP and clipped SGD step, the references of :mod:`ttt_kernels.ops.mlp`."""

import torch


def swiglu_mlp(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``(silu(x w1^T) * (x w3^T)) w2^T`` computed in float32 (float64 if any input is float64), returned in x's dtype.

    Weights follow torch.nn.Linear: w1, w3 [m, d], w2 [d, m]; x [..., d]. Batched: w1, w3 [B, m, d], w2 [B, d, m],
    x [B, n, d].
    """
    dtype = torch.float64 if torch.float64 in (x.dtype, w1.dtype) else torch.float32
    xf, w1f, w3f, w2f = (t.to(dtype) for t in (x, w1, w3, w2))
    a = torch.nn.functional.silu(xf @ w1f.mT) * (xf @ w3f.mT)
    return (a @ w2f.mT).to(x.dtype)


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


def sgd_gemm_update(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, step) -> torch.Tensor:
    """``weight - step * a^T b`` (weight [M, N], a [K, M], b [K, N]) in weight's dtype."""
    return weight - step * (a.to(weight.dtype).T @ b.to(weight.dtype))
