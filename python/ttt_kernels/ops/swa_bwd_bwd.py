"""Gradients of gradients through sliding-window attention: the fake tensor implementation of ``swa_bwd_bwd``.

``torch.ops.ttt_kernels.swa_bwd_bwd(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale) -> (grad_q, grad_k,
grad_v, grad_dout)`` (csrc/ops/swa_bwd_bwd.cpp; math in docs/swa_bwd_bwd.md) takes the cotangents of
swa_bwd's (dq, dk, dv) — any of them None — and returns the derivatives of ``<gdq, dq> + <gdk, dk> + <gdv, dv>``
w.r.t. q, k, v and dout. It is swa_bwd's autograd formula (C++, csrc/ops/swa.cpp), which counts out and lse as the
functions of q, k, v that swa_fwd computes, so swa_bwd's derivative w.r.t. them is None: exact whenever they are
swa_fwd's outputs, as in swa_attention's backward (the only caller autograd sees). A third derivative raises (the
formula registered here).
"""

import torch

_ops = torch.ops.ttt_kernels


@torch.library.register_fake("ttt_kernels::swa_bwd_bwd")
def _swa_bwd_bwd_fake(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), k.new_empty(k.shape), q.new_empty(q.shape)


def _swa_bwd_bwd_setup_context(ctx, inputs, output):
    pass


def _swa_bwd_bwd_backward(ctx, *grads):
    raise NotImplementedError(
        "ttt_kernels::swa_bwd_bwd: the third derivative of swa_attention is not implemented (gradients of gradients "
        "are; differentiate at most twice)"
    )


torch.library.register_autograd(
    "ttt_kernels::swa_bwd_bwd", _swa_bwd_bwd_backward, setup_context=_swa_bwd_bwd_setup_context
)
