"""The package's ops: fused native kernels with autograd (including gradients of gradients) and torch.compile
support."""

from .rms_norm import rms_norm

__all__ = ["rms_norm"]
