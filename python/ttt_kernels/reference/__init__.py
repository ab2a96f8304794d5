"""Pure PyTorch references of the package's ops: the model spec's formulas, unfused, differentiable by autograd."""

from .swiglu import clip_sgd_update, sgd_gemm_update, swiglu_mlp
from .rms_norm import rms_norm
from .swa import swa_attention

__all__ = ["clip_sgd_update", "rms_norm", "sgd_gemm_update", "swa_attention", "swiglu_mlp"]
