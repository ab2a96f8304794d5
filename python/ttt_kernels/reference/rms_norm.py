"""Pure PyTorch RMSNorm, the reference of :func:`ttt_kernels.ops.rms_norm`."""

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, residual=None, rope=None):
    """``[residual +] weight * x / sqrt(mean(x^2, -1) + eps)`` in float32 (float64 for float64 x), returned in x's
    dtype; with ``rope`` ([n, d/2, 2] (cos, sin), x [..., n, heads, d]) each pair of the norm is multiplied, as a
    complex number, by cos + i sin of its position."""
    xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    out = weight.to(xf.dtype) * xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if rope is not None:
        pairs = torch.view_as_complex(out.unflatten(-1, (-1, 2)).contiguous())
        out = torch.view_as_real(pairs * torch.view_as_complex(rope)[:, None]).flatten(-2)
    return (out if residual is None else residual.to(xf.dtype) + out).to(x.dtype)
