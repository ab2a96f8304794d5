"""The dynamic SwiGLU MLP of TTT-E2E, with first and second derivatives (docs/mlp.md).

Native ops (csrc/ops/swiglu.cpp), rows = x.numel() / d:

- ``swiglu_mlp_fwd(x, w1, w3, w2) -> (y, h)``: h [rows, m, 2] holds the pre-activations (h1, h3) interleaved.
  Batched (each sequence its own fast weights): x [B, n, d], w1, w3 [B, m, d], w2 [B, d, m], rows = B n.
- ``swiglu_mlp_bwd(grad_y, x, w1, w3, w2, h, grad_h, output_mask) -> (grad_x, grad_w1, grad_w3, grad_w2)``: grad_h
  (optional) is a gradient flowing into h directly; it is nonzero only in the double backward, which differentiates
  h. output_mask (4 bools, default all true) selects the gradients computed: the others are None, their GEMMs
  skipped (the autograd formula passes which inputs need a gradient).
- ``swiglu_gate_bwd_bwd(h, da, grad_h, cot_dh, cot_a) -> (cot_h, cot_da, dh, a)``: the gate's fused element-wise
  double backward (and the recomputed dh [rows, 2, m] and a).

The autograd formulas are C++ (csrc/ops/swiglu.cpp): swiglu_mlp_fwd's backward is swiglu_mlp_bwd, asked only for
the gradients the running backward pass needs; swiglu_mlp_bwd's is composed of matrix products and
swiglu_gate_bwd_bwd, and its gradient for h flows back into swiglu_mlp_fwd as grad_h, so gradients of gradients are
exact (second order). This module registers the fake tensor implementations (torch.compile) and swiglu_gate_bwd_bwd's
formula, which raises: derivatives of third order are not implemented.
"""

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

_ops = torch.ops.ttt_kernels

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def swiglu_mlp(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``(silu(x w1^T) * (x w3^T)) w2^T``, the SwiGLU MLP with torch.nn.Linear weights.

    Args:
        x: [..., d] float32, float64, bfloat16 or float16; [B, n, d] with batched weights.
        w1, w3: [m, d] (gate and up projection); w2: [d, m] (down projection). x's dtype, or float32 when x is
            bfloat16 / float16 (float32 master weights; their gradients are then float32). Batched: w1, w3
            [B, m, d] and w2 [B, d, m], sequence b's MLP applied to x[b] (the fast weights of B sequences, one
            batched GEMM per projection).

    Returns y [..., d] in x's dtype. Differentiable twice in all inputs. CPU: float32 math (float64 for float64).
    CUDA: bfloat16 / float16 x with d and m multiples of 8, tensor-core GEMMs with float32 accumulation.
    """
    tensors = {"x": x, "w1": w1, "w3": w3, "w2": w2}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"swiglu_mlp: {name} must be a tensor, got {type(t).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"swiglu_mlp: x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"swiglu_mlp: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    batch = (w1.shape[0],) if w1.dim() == 3 else ()
    if batch and (x.dim() != 3 or x.shape[0] != batch[0]):
        raise ValueError(
            f"swiglu_mlp: with batched weights (w1 {tuple(w1.shape)}) x must have shape ({batch[0]}, n, d), "
            f"got {tuple(x.shape)}"
        )
    if w1.dim() - len(batch) != 2 or w1.shape[-1] != d or w1.shape[-2] == 0:
        raise ValueError(
            f"swiglu_mlp: w1 must have shape ({'B, ' if batch else ''}m, {d}) with m > 0, got {tuple(w1.shape)}"
        )
    m = w1.shape[-2]
    if w3.shape != w1.shape:
        raise ValueError(f"swiglu_mlp: w3 must have w1's shape {tuple(w1.shape)}, got {tuple(w3.shape)}")
    if w2.shape != (*batch, d, m):
        raise ValueError(f"swiglu_mlp: w2 must have shape {(*batch, d, m)}, got {tuple(w2.shape)}")
    allowed = (x.dtype, torch.float32) if x.dtype in (torch.bfloat16, torch.float16) else (x.dtype,)
    for name in ("w1", "w3", "w2"):
        w = tensors[name]
        if w.dtype != w1.dtype or w.dtype not in allowed:
            raise ValueError(
                f"swiglu_mlp: w1, w3 and w2 must share one dtype in {[str(t) for t in allowed]}, got {name} {w.dtype}"
            )
        if w.device != x.device:
            raise ValueError(f"swiglu_mlp: {name} must be on x's device {x.device}, got {w.device}")
    y, _ = _ops.swiglu_mlp_fwd(x.contiguous(), w1.contiguous(), w3.contiguous(), w2.contiguous())
    return y


# ---- fake tensors ---------------------------------------------------------------------------------------------------


@torch.library.register_fake("ttt_kernels::swiglu_mlp_fwd")
def _swiglu_mlp_fwd_fake(x, w1, w3, w2):
    rows = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty((rows, w1.shape[-2], 2))


@torch.library.register_fake("ttt_kernels::swiglu_mlp_bwd")
def _swiglu_mlp_bwd_fake(grad_y, x, w1, w3, w2, h, grad_h, output_mask=(True, True, True, True)):
    return tuple(t.new_empty(t.shape) if keep else None for t, keep in zip((x, w1, w3, w2), output_mask))


@torch.library.register_fake("ttt_kernels::swiglu_gate_bwd_bwd")
def _swiglu_gate_bwd_bwd_fake(h, da, grad_h, cot_dh, cot_a):
    return h.new_empty(h.shape), da.new_empty(da.shape), h.new_empty(cot_dh.shape), da.new_empty(da.shape)


# ---- autograd: swiglu_gate_bwd_bwd ----------------------------------------------------------------------------------


def _gate_bwd_bwd_backward(ctx, *grads):
    raise NotImplementedError(
        "ttt_kernels.ops.swiglu_mlp: derivatives of third order are not implemented (swiglu_gate_bwd_bwd has no "
        "backward)"
    )


torch.library.register_autograd("ttt_kernels::swiglu_gate_bwd_bwd", _gate_bwd_bwd_backward)
