"""Pure PyTorch RMSNorm, the reference of :func:`ttt_kernels.ops.rms_norm`."""

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None):
    """``[residual +] weight * x / sqrt(mean(x^2, -1) + eps)`` in float32 (float64 for float64 x), returned in x's
    dtype."""
    xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    out = weight.to(xf.dtype) * xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (out if residual is None else residual.to(xf.dtype) + out).to(x.dtype)
