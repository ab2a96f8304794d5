"""The two op sets the model runs on: the package's fused ops, or their pure-PyTorch references.

One model code path calls ``opset.<op>``; :class:`~ttt_kernels.model.TTTE2EModel` picks the set (``ops="package"``
or ``ops="reference"``). The reference set is what the tests compare against.
"""

import dataclasses
from collections.abc import Callable

from .. import ops as _package
from .. import reference as _reference


@dataclasses.dataclass(frozen=True)
class OpSet:
    name: str
    rms_norm: Callable
    # Sliding-window attention, differentiable twice (the suffix blocks' backward is part of the inner gradient).
    swa_attention: Callable
    # SwiGLU MLP with torch Linear weights (static MLPs) or batched ones (the fast weights of every sequence),
    # differentiable twice.
    swiglu_mlp: Callable
    # [w - lr * clip(g)] over a list of tensors with one global norm, per sequence when batched (the fast weights).
    clip_sgd_update: Callable


PACKAGE = OpSet(
    name="package",
    rms_norm=_package.rms_norm,
    swa_attention=_package.swa_attention,
    swiglu_mlp=_package.swiglu_mlp,
    clip_sgd_update=_package.clip_sgd_update,
)

REFERENCE = OpSet(
    name="reference",
    rms_norm=_reference.rms_norm,
    swa_attention=_reference.swa_attention,
    swiglu_mlp=_reference.swiglu_mlp,
    clip_sgd_update=_reference.clip_sgd_update,
)

OPSETS = {s.name: s for s in (PACKAGE, REFERENCE)}
