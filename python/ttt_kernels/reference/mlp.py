"""Pure PyTorch dynamic SwiGLU MLP and clipped SGD step, the references of :mod:`ttt_kernels.ops.mlp`."""

import torch


def swiglu_mlp(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``(silu(x w1^T) * (x w3^T)) w2^T`` computed in float32 (float64 if any input is float64), returned in x's dtype.

    Weights follow torch.nn.Linear: w1, w3 [m, d], w2 [d, m]; x [..., d].
    """
    dtype = torch.float64 if torch.float64 in (x.dtype, w1.dtype) else torch.float32
    xf, w1f, w3f, w2f = (t.to(dtype) for t in (x, w1, w3, w2))
    a = torch.nn.functional.silu(xf @ w1f.T) * (xf @ w3f.T)
    return (a @ w2f.T).to(x.dtype)


def clip_sgd_update(weights, grads, lr: float, max_norm: float) -> list[torch.Tensor]:
    """``w - lr * clip(g)`` for every pair, clipped by the global L2 norm of all grads as optax.clip_by_global_norm:

    ``g if norm < max_norm else g / norm * max_norm`` (a select, so zero gradients pass through unchanged).
    """
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    trigger = norm < max_norm
    return [w - lr * torch.where(trigger, g, g / norm * max_norm) for w, g in zip(weights, grads)]


def sgd_gemm_update(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, step) -> torch.Tensor:
    """``weight - step * a^T b`` (weight [M, N], a [K, M], b [K, N]) in weight's dtype."""
    return weight - step * (a.to(weight.dtype).T @ b.to(weight.dtype))
