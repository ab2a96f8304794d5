"""Reference models for tests/test_model.py.

- :func:`reference_copy`: the package model's own code on the reference op set (``ops="reference"``), run without
  checkpointing (``meta_loss(..., checkpoint=False)``): plain autograd through every inner step.
- :func:`naive_meta_loss`: an independent restatement of the spec that shares no code with the model beyond the
  reference ops. It has no KV cache and no chunked attention: the inner loss of chunk i is computed by running the
  whole sequence up to chunk i with full-sequence sliding-window attention, the dynamic MLP applying W_c to the tokens
  of chunk c (so the keys of earlier chunks are those their own fast weights produced). Sequences run one at a time.
  Quadratic in the number of chunks: for small tests only.
"""

import torch
import torch.nn.functional as F

from ttt_kernels import reference
from ttt_kernels.model import TTTE2EModel


def reference_copy(model: TTTE2EModel) -> TTTE2EModel:
    """A model with the same config and parameters running on the reference ops."""
    ref = TTTE2EModel(model.config, ops="reference").to(model.embed.weight.dtype)
    ref.load_state_dict(model.state_dict())
    return ref


def _rope(x: torch.Tensor, theta: float, float32_angles: bool) -> torch.Tensor:
    """x [n, heads, hd] at positions 0..n-1; pairs (x[2i], x[2i+1]) as complex numbers times exp(i pos f_i)."""
    n, hd = x.shape[0], x.shape[-1]
    dt = torch.float32 if float32_angles else torch.float64
    freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=dt) / hd)
    angles = torch.outer(torch.arange(n, dtype=dt), freq)
    rot = torch.complex(angles.cos().to(x.dtype), angles.sin().to(x.dtype))[:, None]  # [n, 1, hd/2]
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (hd // 2, 2)).contiguous()) * rot).flatten(-2)


def _swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def _forward(model: TTTE2EModel, tokens: torch.Tensor, fast_per_chunk: list) -> torch.Tensor:
    """Logits [n, V] of one sequence of n tokens; suffix block j's dynamic MLP applies fast_per_chunk[c][j] (a
    (w1, w3, w2) triple) to the tokens of chunk c."""
    c = model.config
    b, eps, hd = c.mini_batch_size, c.norm_eps, c.head_dim

    def norm(x, mod):
        return reference.rms_norm(x, mod.weight, eps)

    n = tokens.shape[0]
    x = model.embed.weight[tokens]
    for layer, blk in enumerate(model.blocks):
        a = blk.attn
        y = norm(x, blk.seq_norm)
        q = _rope(norm((y @ a.wq.weight.T).view(n, -1, hd), a.q_norm), c.rope_theta, c.rope_float32_angles)
        k = _rope(norm((y @ a.wk.weight.T).view(n, -1, hd), a.k_norm), c.rope_theta, c.rope_float32_angles)
        v = (y @ a.wv.weight.T).view(n, -1, hd)
        o = reference.swa_attention(q[None], k[None], v[None], c.window)[0]
        x = x + norm(o.reshape(n, -1) @ a.wo.weight.T, blk.seq_post_norm)
        j = layer - c.num_prefix_layers
        if j >= 0:
            y = norm(x, blk.prime_norm)
            parts = [_swiglu(y[i : i + b], *(w.to(x.dtype) for w in fast_per_chunk[i // b][j])) for i in range(0, n, b)]
            x = x + norm(torch.cat(parts), blk.prime_post_norm)
        x = x + norm(
            _swiglu(norm(x, blk.ffn_norm), blk.ffn.w1.weight, blk.ffn.w3.weight, blk.ffn.w2.weight), blk.ffn_post_norm
        )
    return (norm(x, model.norm_f) @ model.embed.weight.T).to(torch.promote_types(x.dtype, torch.float32))


def naive_meta_loss(model: TTTE2EModel, tokens: torch.Tensor, inner_lr: float = 1.0, first_order: bool = False):
    """(loss, per_chunk_losses [B, T/b], fast-weight trajectory per sequence) as the spec defines them."""
    c = model.config
    b, bos = c.mini_batch_size, c.bos_token_id
    per_seq, trajectories = [], []
    for seq in tokens:
        inputs, targets = seq[:-1], seq[1:]
        n_chunks = inputs.shape[0] // b
        dt = torch.promote_types(model.embed.weight.dtype, torch.float32)
        fast = [
            [
                (blk.prime.w1.weight.to(dt), blk.prime.w3.weight.to(dt), blk.prime.w2.weight.to(dt))
                for blk in model.suffix_blocks
            ]
        ]
        losses = []
        for i in range(n_chunks):
            logits = _forward(model, inputs[: (i + 1) * b], fast)[i * b :]
            tgt = targets[i * b : (i + 1) * b]
            ce = F.cross_entropy(logits, tgt, reduction="none")
            valid = torch.ones_like(tgt, dtype=torch.bool) if bos is None else tgt != bos
            loss = (ce * valid).sum() / valid.sum().clamp(min=1)
            losses.append(loss)
            flat = [w for triple in fast[i] for w in triple]
            grads = torch.autograd.grad(loss, flat, create_graph=not first_order, retain_graph=True)
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            scale = torch.where(norm < c.inner_max_norm, torch.ones_like(norm), c.inner_max_norm / norm)
            new = [w - inner_lr * scale * g for w, g in zip(flat, grads)]
            fast.append([tuple(new[3 * j : 3 * j + 3]) for j in range(c.num_suffix_layers)])
        per_seq.append(torch.stack(losses))
        trajectories.append(fast)
    per_chunk = torch.stack(per_seq)
    return per_chunk.mean(), per_chunk, trajectories
