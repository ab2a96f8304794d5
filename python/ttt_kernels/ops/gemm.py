"""The fused SGD update of a fast weight whose gradient is a matrix product, and the private op exposing the GEMM
wrapper of the CUDA kernels to tests (docs/mlp.md).

Native ops (csrc/ops/gemm.cpp):

- ``sgd_gemm_update_(weight, a, b, step)``: weight -= step * a^T b (fused into the GEMM epilogue on CUDA).
- ``_mlp_gemm(a, b, d, c, t, epilogue, alpha, beta, scale)``: one GEMM of the wrapper (CUDA tensors, or CPU tensors
  inside ``ttt_kernels.sim.enabled()``), for tests.

This module registers their fake tensor implementations (torch.compile); neither is differentiable.
"""

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

_ops = torch.ops.ttt_kernels


def sgd_gemm_update_(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, step: torch.Tensor) -> None:
    """``weight -= step * a^T b`` in place, with the update fused into the GEMM's epilogue on CUDA.

    The SGD step of one fast weight whose gradient is a product (e.g. dL/dw2 = dy^T a) when the step is known
    before the gradient: the gradient is never written to memory. step is a one-element float32 tensor on weight's
    device (read on the device: no host synchronization on CUDA).

    Args:
        weight: [M, N] float32 (float64 allowed on the CPU), contiguous.
        a: [K, M], b: [K, N], one float dtype (bfloat16 / float16 on CUDA, with M, N multiples of 8).
    """
    for name, t in (("weight", weight), ("a", a), ("b", b), ("step", step)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"sgd_gemm_update_: {name} must be a tensor, got {type(t).__name__}")
    with torch.no_grad():
        _ops.sgd_gemm_update_(weight, a, b, step)


# ---- fake tensors ---------------------------------------------------------------------------------------------------


@torch.library.register_fake("ttt_kernels::sgd_gemm_update_")
def _sgd_gemm_update_fake(weight, a, b, step):
    return None


@torch.library.register_fake("ttt_kernels::_mlp_gemm")
def _mlp_gemm_fake(a, b, d, c, t, epilogue, alpha, beta, scale):
    return None
