"""Pure PyTorch references of the package's ops: the model spec's formulas, unfused, differentiable by autograd."""

from .clip_sgd import clip_sgd_update
from .gemm import sgd_gemm_update
from .rms_norm import rms_norm
from .swa import swa_attention
from .swiglu import swiglu_mlp

__all__ = ["clip_sgd_update", "rms_norm", "sgd_gemm_update", "swa_attention", "swiglu_mlp"]
