"""Pure PyTorch dynamic SwiGLU MLP, the reference of :mod:`ttt_kernels.ops.swiglu`."""

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
