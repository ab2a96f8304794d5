"""The package's ops: fused native kernels with autograd (including gradients of gradients) and torch.compile
support."""

from . import swa_bwd_bwd  # noqa: F401  (registers swa_bwd's derivative)
from .clip_sgd import clip_sgd_update, clip_sgd_update_
from .gemm import sgd_gemm_update_
from .rms_norm import rms_norm
from .swa import swa_attention
from .swiglu import swiglu_mlp

__all__ = ["clip_sgd_update", "clip_sgd_update_", "rms_norm", "sgd_gemm_update_", "swa_attention", "swiglu_mlp"]
