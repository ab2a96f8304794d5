"""Pure PyTorch sliding-window attention, the reference of :func:`ttt_kernels.ops.swa_attention`."""

import torch


def swa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *, scale=None) -> torch.Tensor:
    """Dense masked softmax attention in the inputs' dtype: q [b, sq, hq, d], k and v [b, sk, hkv, d]; query i (at
    position i + sk - sq) sees the keys t - window + 1 .. t; query head h reads kv head h // (hq // hkv)."""
    sq, sk, group = q.shape[1], k.shape[1], q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    t = torch.arange(sk - sq, sk, device=q.device)[:, None]
    j = torch.arange(sk, device=q.device)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * (q.shape[-1] ** -0.5 if scale is None else scale)
    p = s.masked_fill((j > t) | (j <= t - window), float("-inf")).softmax(-1)
    return torch.einsum("bhij,bjhd->bihd", p, v)
