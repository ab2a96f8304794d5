"""The chunk step on the package's ops, with its first-order backward written out: prefill and decode, and the inner
step of meta-learning.

One TTT step is the suffix blocks' forward over a chunk of b tokens, the gradient of the chunk's loss with respect to
the fast weights, and the clipped SGD update. Under autograd every op of the suffix is recorded and the inner gradient
runs a Python node per op, with gradients of parameters nobody asked for (the static MLPs' weights, the norms'). Here
the forward keeps what the backward needs (the inputs of the norms and their rstd, the MLPs' pre-activations h,
attention's logsumexp) and the backward calls the backward ops directly on the path to the fast weights: about a
third of the op calls, no autograd engine.

Inference runs it without autograd (prefill and decode: inference mode). Meta-learning runs it with autograd recording
(the forward ops, then the backward ops, each differentiable once more by its registered formula): the outer gradient
goes through the inner gradient exactly as through torch.autograd.grad(..., create_graph=True), second order included.

Shapes: x [B, n, d]; q [B, n, H, hd], keys/values [B, k-1+n, Hkv, hd] (the window before the chunk, then its own; in
meta-learning up to b-1 positions more before it, masked: TTTE2EModel._windowed_kv);
logits [B, n, V]. The loss of sequence s is the mean cross-entropy over its valid targets (TTTE2EModel._chunk_loss);
the fast weights of sequence s get the gradient of loss s only.
"""

import dataclasses

import torch
import torch.nn.functional as F

from ..profiling import phase

_ops = torch.ops.ttt_kernels


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype math on ``dtype`` values runs in: float64 for float64, float32 otherwise (a Python rule, not
    torch.promote_types: that is an op call, counted like any other)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass
class _BlockTape:
    """What a suffix block's backward reads, named after the forward's values (TTTE2EModel._block):
    x0 -> n0 = norm(x0) -> (q, k, v) -> (qn, kn) = QK-norm + RoPE -> attention o over keys, values = the window
    and (kn, v) -> a = o wo^T -> x1 = x0 + norm(a) -> p = norm(x1)
    -> y = fast MLP(p) -> x2 = x1 + norm(y) -> f = norm(x2) -> z = static MLP(f) -> x3 = x2 + norm(z).
    r*: the rstd of each norm's input ([B n] or [B n H]); h*: the MLPs' pre-activations."""

    x0: torch.Tensor
    r0: torch.Tensor
    q: torch.Tensor
    rq: torch.Tensor
    k: torch.Tensor
    rk: torch.Tensor
    rope: torch.Tensor
    qn: torch.Tensor
    kn: torch.Tensor
    v: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    o: torch.Tensor
    lse: torch.Tensor
    a: torch.Tensor
    ra: torch.Tensor
    x1: torch.Tensor
    rp: torch.Tensor
    p: torch.Tensor
    hy: torch.Tensor
    y: torch.Tensor
    ry: torch.Tensor
    x2: torch.Tensor
    rf: torch.Tensor
    f: torch.Tensor
    hz: torch.Tensor
    z: torch.Tensor
    rz: torch.Tensor


@torch.no_grad()
def chunk_step(model, h, targets, pos0, fast: tuple, kv: list, inner_lr: float) -> tuple:
    """TTTE2EModel._chunk_step on the package's ops: h [B, b, d] (prefix output at positions pos0..), targets
    [B, b], the fast weights and kv[j] the window of suffix block j (or None). Returns (the logits [B, b, V] the
    loss read, in float32 (float64 for float64), the next fast weights, the next windows)."""
    keep = model.config.window - 1
    x, tapes = suffix_forward(model, h, pos0, fast, [[w] if w is not None else [] for w in kv])
    # The next window: the last k-1 of the keys/values the chunk's attention read (the window, then its own).
    windows = [(t.keys[:, -keep:], t.values[:, -keep:]) for t in tapes]
    logits, rnf = head(model, x)
    with phase("ttt.inner_step"):
        grads = fast_weight_grads(model, tapes, x, rnf, logits, targets, fast)
        new_fast = _ops.clip_sgd_update(list(fast), grads, float(inner_lr), float(model.config.inner_max_norm), True)
    return logits, tuple(new_fast[0]), windows


def suffix_forward(model, h, pos0, fast: tuple, past: list) -> tuple:
    """The suffix blocks over h [B, n, d] (prefix output at positions pos0..) with the fast weights; past[j]: the
    earlier (k, v) pairs of suffix block j, in order. Returns (x [B, n, d], [_BlockTape per block])."""
    x, tapes = h, []
    for j, blk in enumerate(model.suffix_blocks):
        x, tape = _block_forward(model, blk, x, pos0, past[j], fast[3 * j : 3 * j + 3])
        tapes.append(tape)
    return x, tapes


def head(model, x) -> tuple:
    """Final norm and tied LM head (TTTE2EModel._logits) of the last suffix block's output x [B, n, d]: (logits
    [B, n, V] in float32 (float64 for float64), the final norm's rstd)."""
    nf, rnf = _ops.rms_norm_fwd(x, model.norm_f.weight, model.config.norm_eps)
    return F.linear(nf, model.embed.weight).to(compute_dtype(x.dtype)), rnf


def fast_weight_grads(model, tapes: list, x, rnf, logits, targets, fast: tuple) -> list:
    """The gradient of each sequence's chunk loss with respect to its fast weights ([w1, w3, w2] per suffix block),
    from the blocks' tapes, their output x [B, n, d], the head's rstd and logits [B, n, V] (head)."""
    c = model.config
    # Loss gradient: dlogits = (softmax - onehot(target)) * valid / count per sequence, in the logits' dtype.
    probs = torch.softmax(logits, -1).scatter_add(-1, targets[..., None], logits.new_full((*targets.shape, 1), -1.0))
    if c.bos_token_id is None:
        probs = probs * (1.0 / targets.shape[1])
    else:
        valid = (targets != c.bos_token_id).to(probs.dtype)
        probs = probs * (valid / valid.sum(1, keepdim=True).clamp(min=1))[..., None]
    weight = model.embed.weight
    dx = _ops.rms_norm_bwd(probs.to(weight.dtype) @ weight, x, model.norm_f.weight, rnf)[0]

    grads = [None] * len(fast)
    for j in reversed(range(len(tapes))):
        blk, t = model.suffix_blocks[j], tapes[j]
        w = fast[3 * j : 3 * j + 3]
        dz = _ops.rms_norm_bwd(dx, t.z, blk.ffn_post_norm.weight, t.rz)[0]
        static = (blk.ffn.w1.weight, blk.ffn.w3.weight, blk.ffn.w2.weight)
        df = _ops.swiglu_mlp_bwd(dz, t.f, *static, t.hz, None, [True, False, False, False])[0]
        dx = dx + _ops.rms_norm_bwd(df, t.x2, blk.ffn_norm.weight, t.rf)[0]
        dy = _ops.rms_norm_bwd(dx, t.y, blk.prime_post_norm.weight, t.ry)[0]
        dp, *w_grads = _ops.swiglu_mlp_bwd(dy, t.p, *w, t.hy, None, [j > 0, True, True, True])
        grads[3 * j : 3 * j + 3] = w_grads
        if j > 0:
            dx = _block_input_grad(model, blk, t, dx, dp)
    return grads


def _block_forward(model, blk, x, pos0, past: list, fast: tuple) -> tuple:
    """The suffix block over x [B, n, d] with the fast weights (w1, w3, w2), past: the earlier (k, v) pairs.
    Returns (x3, _BlockTape)."""
    c, att = model.config, blk.attn
    eps = c.norm_eps
    x0 = x.contiguous()
    n0, r0 = _ops.rms_norm_fwd(x0, blk.seq_norm.weight, eps)
    q, k, v = model._project_qkv(att, n0)
    rope = model._rope_rotations(pos0, x0.shape[1], c.head_dim, x0.device, compute_dtype(x0.dtype))
    qn, rq = _ops.rms_norm_fwd(q, att.q_norm.weight, eps, rope=rope)
    kn, rk = _ops.rms_norm_fwd(k, att.k_norm.weight, eps, rope=rope)
    keys, values = model._windowed_kv(past, kn, v)
    o, lse = _ops.swa_fwd(qn, keys, values, c.window, c.head_dim**-0.5)
    a = F.linear(o.flatten(2), att.wo.weight)
    x1, ra = _ops.rms_norm_fwd(a, blk.seq_post_norm.weight, eps, x0)
    p, rp = _ops.rms_norm_fwd(x1, blk.prime_norm.weight, eps)
    y, hy = _ops.swiglu_mlp_fwd(p, *fast)
    x2, ry = _ops.rms_norm_fwd(y, blk.prime_post_norm.weight, eps, x1)
    f, rf = _ops.rms_norm_fwd(x2, blk.ffn_norm.weight, eps)
    z, hz = _ops.swiglu_mlp_fwd(f, blk.ffn.w1.weight, blk.ffn.w3.weight, blk.ffn.w2.weight)
    x3, rz = _ops.rms_norm_fwd(z, blk.ffn_post_norm.weight, eps, x2)
    tape = _BlockTape(
        x0, r0, q, rq, k, rk, rope, qn, kn, v, keys, values, o, lse, a, ra, x1, rp, p, hy, y, ry, x2, rf, f, hz, z, rz
    )
    return x3, tape


def _block_input_grad(model, blk, t: _BlockTape, dx2, dp) -> torch.Tensor:
    """The gradient of the block's input x0 from those of x2 (dx2) and of the fast MLP's input p (dp): back through
    the prime norm, the attention's post-norm, the attention over the chunk's own keys/values (the window before
    it is a constant), QK-norm + RoPE and the projections."""
    att = blk.attn
    bsz, n, _ = t.x0.shape
    dx1 = dx2 + _ops.rms_norm_bwd(dp, t.x1, blk.prime_norm.weight, t.rp)[0]
    da = _ops.rms_norm_bwd(dx1, t.a, blk.seq_post_norm.weight, t.ra)[0]
    do = (da @ att.wo.weight).view(t.o.shape)
    c = model.config
    dq, dkeys, dvalues = _ops.swa_bwd(do, t.qn, t.keys, t.values, t.o, t.lse, c.window, c.head_dim**-0.5)
    dq = _ops.rms_norm_bwd(dq, t.q, att.q_norm.weight, t.rq, t.rope)[0]
    dk = _ops.rms_norm_bwd(dkeys[:, -n:].contiguous(), t.k, att.k_norm.weight, t.rk, t.rope)[0]
    dv = dvalues[:, -n:].reshape(bsz, n, -1)
    dn0 = dq.view(bsz, n, -1) @ att.wq.weight + dk.view(bsz, n, -1) @ att.wk.weight + dv @ att.wv.weight
    return dx1 + _ops.rms_norm_bwd(dn0, t.x0, blk.seq_norm.weight, t.r0)[0]
