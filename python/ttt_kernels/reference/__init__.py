"""Pure PyTorch references of the package's ops: the model spec's formulas, unfused, differentiable by autograd."""

from .rms_norm import rms_norm

__all__ = ["rms_norm"]
