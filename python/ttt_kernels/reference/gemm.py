"""Pure PyTorch SGD update by a matrix product, the reference of :mod:`ttt_kernels.ops.gemm`."""

import torch


def sgd_gemm_update(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, step) -> torch.Tensor:
    """``weight - step * a^T b`` (weight [M, N], a [K, M], b [K, N]) in weight's dtype."""
    return weight - step * (a.to(weight.dtype).T @ b.to(weight.dtype))
