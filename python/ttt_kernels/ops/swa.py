"""Fused causal sliding-window attention (FlashAttention layout) with first derivatives.

The native ops (csrc/ops/swa.cpp) are ``torch.ops.ttt_kernels.swa_fwd(q, k, v, window, scale) -> (out, lse)`` and
``swa_bwd(dout, q, k, v, out, lse, window, scale) -> (dq, dk, dv)``, lse being the logsumexp of each row of scores
([batch, heads_q, seqlen_q], float32, float64 for float64 inputs). This module registers their fake tensor
implementations (for torch.compile). Their autograd formulas are C++ (csrc/ops/swa.cpp): swa_fwd's backward is
swa_bwd, and swa_bwd's is the fused double backward (swa_bwd_bwd, :mod:`ttt_kernels.ops.swa_bwd_bwd`).
"""

import math

import torch

import ttt_kernels  # noqa: F401  (loads the native library that defines torch.ops.ttt_kernels)

_ops = torch.ops.ttt_kernels


def swa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *, scale=None) -> torch.Tensor:
    """Causal sliding-window attention ``softmax(scale * q k^T + mask) v``.

    Args:
        q: [batch, seqlen_q, heads_q, head_dim] float32, float64, bfloat16 or float16.
        k, v: [batch, seqlen_k, heads_kv, head_dim], q's dtype and device; seqlen_q <= seqlen_k, heads_q a multiple
            of heads_kv (query head h reads kv head h // (heads_q // heads_kv)).
        window: keys per query (>= 1): query i sits at t = i + seqlen_k - seqlen_q and sees the keys t - window + 1
            .. t (FlashAttention window_size=(window - 1, 0)); window >= seqlen_k is plain causal attention.
        scale: softmax scale, 1 / sqrt(head_dim) when None.

    Returns out [batch, seqlen_q, heads_q, head_dim] in q's dtype (16-bit inputs are computed in float32 on CPU).
    Differentiable twice in q, k and v (the second time by the fused double backward).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"swa_attention: {name} must be a 4-d tensor (batch, seqlen, heads, head_dim), not {shape}"
            )
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"swa_attention: {name} must have q's dtype and device ({q.dtype}, {q.device}), "
                f"got ({t.dtype}, {t.device})"
            )
    if q.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ValueError(f"swa_attention: q must be float32, float64, bfloat16 or float16, got {q.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"swa_attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    (b, sq, hq, d), (bk, sk, hkv, dk) = q.shape, k.shape
    if bk != b or dk != d or d == 0:
        raise ValueError(
            f"swa_attention: k must have q's batch size and (non-zero) head_dim, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if sq > sk:
        raise ValueError(f"swa_attention: seqlen_q ({sq}) must not exceed seqlen_k ({sk})")
    if hkv == 0 or hq == 0 or hq % hkv != 0:
        raise ValueError(f"swa_attention: heads_q ({hq}) must be a positive multiple of heads_kv ({hkv})")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window < 2**63:
        raise ValueError(f"swa_attention: window must be an int in [1, 2^63), got {window!r}")
    if scale is None:
        scale = d**-0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"swa_attention: scale must be a finite number or None, got {scale!r}")
    out, _ = _ops.swa_fwd(_inner_contiguous(q), _inner_contiguous(k), _inner_contiguous(v), window, float(scale))
    return out


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t with a contiguous last dimension (the ops accept any other strides)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("ttt_kernels::swa_fwd")
def _swa_fwd_fake(q, k, v, window, scale):
    b, sq, hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((b, hq, sq), dtype=_lse_dtype(q.dtype))


@torch.library.register_fake("ttt_kernels::swa_bwd")
def _swa_bwd_fake(dout, q, k, v, out, lse, window, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
