"""Gradients of gradients through sliding-window attention: the autograd formula of ``swa_bwd``.

``torch.ops.ttt_kernels.swa_bwd_bwd(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale) -> (grad_q, grad_k,
grad_v, grad_dout)`` (csrc/ops/swa_bwd_bwd.cpp; math in docs/swa_bwd_bwd.md) takes the cotangents of
swa_bwd's (dq, dk, dv) — any of them None — and returns the derivatives of ``<gdq, dq> + <gdk, dk> + <gdv, dv>``
w.r.t. q, k, v and dout. It counts out and lse as the functions of q, k, v that swa_fwd computes, so swa_bwd's
derivative w.r.t. them is None: exact whenever they are swa_fwd's outputs, as in swa_attention's backward (the only
caller autograd sees). A third derivative raises.
"""

import torch

from .swa import _inner_contiguous

_ops = torch.ops.ttt_kernels


@torch.library.register_fake("ttt_kernels::swa_bwd_bwd")
def _swa_bwd_bwd_fake(gdq, gdk, gdv, q, k, v, out, dout, lse, window, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), k.new_empty(k.shape), q.new_empty(q.shape)


def _swa_bwd_setup_context(ctx, inputs, output):
    dout, q, k, v, out, lse, window, scale = inputs
    ctx.save_for_backward(dout, q, k, v, out, lse)
    ctx.window, ctx.scale = window, scale
    # Cotangents of outputs that do not reach the loss arrive as None (not zero tensors): the kernels skip them.
    ctx.set_materialize_grads(False)


def _swa_bwd_backward(ctx, gdq, gdk, gdv):
    dout, q, k, v, out, lse = ctx.saved_tensors
    if gdq is None and gdk is None and gdv is None:
        return None, None, None, None, None, None, None, None
    cotangents = [None if t is None else _inner_contiguous(t) for t in (gdq, gdk, gdv)]
    grad_q, grad_k, grad_v, grad_dout = _ops.swa_bwd_bwd(*cotangents, q, k, v, out, dout, lse, ctx.window, ctx.scale)
    return grad_dout, grad_q, grad_k, grad_v, None, None, None, None


def _swa_bwd_bwd_setup_context(ctx, inputs, output):
    pass


def _swa_bwd_bwd_backward(ctx, *grads):
    raise NotImplementedError(
        "ttt_kernels::swa_bwd_bwd: the third derivative of swa_attention is not implemented (gradients of gradients "
        "are; differentiate at most twice)"
    )


torch.library.register_autograd("ttt_kernels::swa_bwd", _swa_bwd_backward, setup_context=_swa_bwd_setup_context)
torch.library.register_autograd(
    "ttt_kernels::swa_bwd_bwd", _swa_bwd_bwd_backward, setup_context=_swa_bwd_bwd_setup_context
)
