"""The TTT-E2E network ("End-to-End Test-Time Training for Long Context", Tandon et al. 2025; docs/model.md).

Shapes: B sequences, T tokens, d model width, H query heads and Hkv key/value heads of hd, m MLP width, V vocabulary,
L blocks of which the last S are suffix blocks, k the attention window, b the mini-batch (chunk) size.
Activations are [B, n, d]; attention tensors [B, n, heads, hd] (FlashAttention layout).
Fast weights are a flat tuple (w1, w3, w2 of suffix block 0, w1, w3, w2 of suffix block 1, ...), each with a leading
batch dim ([B, m, d], [B, m, d], [B, d, m], torch Linear convention per sequence), in float32 (float64 for a float64
model).
"""

import contextlib
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..profiling import phase
from . import official
from .chunk_step import chunk_step as _explicit_chunk_step
from .chunk_step import compute_dtype, fast_weight_grads, head, suffix_forward
from .config import TTTE2EConfig, check_int
from .opset import OPSETS

KV = tuple[torch.Tensor, torch.Tensor]

# meta_loss(checkpoint="auto") keeps chunk graphs of up to what recomputing every chunk holds, and of at least
# _AUTO_MIN_BUDGET bytes, without recomputing them.
_AUTO_MIN_BUDGET = 64 << 20  # keys (after QK-norm and RoPE) and values, [B, n, Hkv, hd] each

# Tokens per slice of a prompt (TTTE2EModel.prefill's default): the activations held at once when reading one.
PREFILL_SLICE_TOKENS = 4096

# Positions per cached RoPE table (TTTE2EModel._rope_rotations): prefill slices and chunks fall inside one.
_ROPE_SEGMENT = 4096


class _Norm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _MLP(nn.Module):
    def __init__(self, d: int, m: int):
        super().__init__()
        self.w1 = nn.Linear(d, m, bias=False)  # gate (silu)
        self.w3 = nn.Linear(d, m, bias=False)  # up
        self.w2 = nn.Linear(m, d, bias=False)  # down


class _Attention(nn.Module):
    def __init__(self, c: TTTE2EConfig):
        super().__init__()
        d, hd = c.hidden_size, c.head_dim
        self.wq = nn.Linear(d, c.num_heads * hd, bias=False)
        self.wk = nn.Linear(d, c.kv_heads * hd, bias=False)
        self.wv = nn.Linear(d, c.kv_heads * hd, bias=False)
        self.wo = nn.Linear(c.num_heads * hd, d, bias=False)
        self.q_norm = _Norm(hd)  # shared by all heads, applied before RoPE
        self.k_norm = _Norm(hd)


class _Block(nn.Module):
    """x += PostNorm(Sublayer(PreNorm(x))) for attention, [the dynamic MLP,] the static MLP."""

    def __init__(self, c: TTTE2EConfig, suffix: bool):
        super().__init__()
        d = c.hidden_size
        self.seq_norm, self.attn, self.seq_post_norm = _Norm(d), _Attention(c), _Norm(d)
        if suffix:
            # prime.* are W_0, the meta-learned initial fast weights.
            self.prime_norm, self.prime, self.prime_post_norm = _Norm(d), _MLP(d, c.mlp_size), _Norm(d)
        self.ffn_norm, self.ffn, self.ffn_post_norm = _Norm(d), _MLP(d, c.mlp_size), _Norm(d)


@dataclasses.dataclass
class TTTE2EState:
    """Inference state of a batch of sequences (see :meth:`TTTE2EModel.prefill`).

    ``kv[l]`` holds the last k-1 keys/values of block l; for a suffix block only those before the pending chunk.
    ``cuda_graph``: the chunk step (suffix forward, inner gradient and update of a whole chunk) runs as a CUDA graph
    once the windows are full (:class:`_ChunkStepGraph`).
    The pending chunk is the inputs read since the last inner step (fewer than b, or b waiting for their next token):
    their prefix outputs ``pending_h`` [B, p, d], tokens ``pending_tokens`` [B, p] and suffix keys/values
    ``pending_kv`` (computed with the current fast weights). ``logits`` [B, V] are those of the last token read.
    On the package's ops the tensors prefill and decode put in it are inference tensors (:meth:`TTTE2EModel.prefill`):
    read them freely, clone one before changing it in place or using it under autograd.
    """

    batch_size: int
    pos: int
    kv: list
    fast: tuple | None
    pending_h: torch.Tensor | None
    pending_tokens: torch.Tensor | None
    pending_kv: list
    logits: torch.Tensor | None
    inner_lr: float
    cuda_graph: bool = False
    chunk_graph: "_ChunkStepGraph | None" = None  # the captured chunk step (cuda_graph)


def _saveable(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it outside inference mode if it is an inference tensor (which autograd cannot save)."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


def _bounded_insert(cache: dict, key, value, capacity: int) -> None:
    """cache[key] = value, dropping the oldest entries beyond ``capacity`` (dicts keep insertion order)."""
    while len(cache) >= capacity:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _last(items, n: int):
    """The last n items (none for n = 0)."""
    return items[max(len(items) - n, 0) :]


def _window(pieces: list, n: int) -> list:
    """The last pieces of a list of (k, v) pairs in order that together hold at least n positions (all if fewer)."""
    count, total = 0, 0
    while count < len(pieces) and total < n:
        count += 1
        total += pieces[-count][0].shape[1]
    return pieces[len(pieces) - count :]


def _append(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """old and new concatenated along the sequence (dim 1)."""
    return new if old is None else torch.cat((old, new), 1)


def _flatten_kv(kvs: list) -> tuple:
    """[[(k, v) per chunk] per suffix block] -> (k, v, k, v, ...), block-major."""
    return tuple(t for per_block in kvs for kv in per_block for t in kv)


def _unflatten_kv(flat, n_blocks: int, n_chunks: int) -> list:
    return [
        [(flat[2 * (j * n_chunks + i)], flat[2 * (j * n_chunks + i) + 1]) for i in range(n_chunks)]
        for j in range(n_blocks)
    ]


@dataclasses.dataclass
class _MetaArgs:
    inner_lr: float
    first_order: bool
    n_hist: int  # chunks of keys a chunk can see: ceil((k-1)/b)
    params: list  # parameters the suffix chunks read (see TTTE2EModel._chunk_params)


class _SavedBytes:
    """``with _SavedBytes(exclude) as saved: ...`` counts the bytes of the distinct storages autograd saves for the
    backward meanwhile (what the graph built there holds), storages in ``exclude`` (data pointers) left out. Reads
    sizes only: no host synchronization. Saved-tensor hooks the caller installed (e.g. offloading to the CPU) still
    apply: the counting hooks pass every tensor on to them."""

    def __init__(self, exclude=()):
        self.exclude = set(exclude)
        self.storages = {}
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)
        self._outer = top(False)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.exclude:
            self.storages[storage.data_ptr()] = storage.nbytes()
        # Saving the tensor itself would put an output's graph node in a reference cycle (tensor -> grad_fn -> saved
        # tensor), freed only by the garbage collector: a detached alias (same storage) avoids it; autograd restores
        # the saved tensor's graph when it unpacks it.
        return t.detach() if self._outer is None else self._outer[0](t)

    def _unpack(self, packed):
        return packed if self._outer is None else self._outer[1](packed)

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


class _Recompute(torch.autograd.Function):
    """Runs ``run(*inputs, create_graph=False)`` without keeping its graph; the backward recomputes it with
    ``create_graph=True`` (so gradients of inner gradients are available) and back-propagates through it.

    ``params`` are the module parameters ``run`` reads directly (listed so that their gradients are returned).
    Unlike torch.utils.checkpoint(use_reentrant=False), an inner torch.autograd.grad in ``run`` does not trigger a
    second forward during the forward pass.
    """

    @staticmethod
    def forward(ctx, run, n_inputs, *args):
        ctx.run, ctx.n_inputs = run, n_inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*args[:n_inputs])
        ctx.params = args[n_inputs:]
        with torch.enable_grad():
            outs = run(*(a.detach().requires_grad_(a.requires_grad) for a in args[:n_inputs]), create_graph=False)
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        inputs = [a.detach().requires_grad_(a.requires_grad) for a in ctx.saved_tensors]
        with torch.enable_grad(), phase("ttt.recompute"):
            outs = ctx.run(*inputs, create_graph=True)
        pairs = [(o, g) for o, g in zip(outs, grad_outs) if g is not None and o.requires_grad]
        wrt = [t for t in (*inputs, *ctx.params) if t.requires_grad]
        grads = iter(
            torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
            if pairs and wrt
            else [None] * len(wrt)
        )
        return (None, None, *(next(grads) if t.requires_grad else None for t in (*inputs, *ctx.params)))


class TokenSource:
    """Tokens read a slice at a time (TTTE2EModel.prefill and generate, the CLI's evaluation): an int64 tensor [B, n]
    (read as views), or one sequence as a 1-D token source (numpy array or memmap of integers, bytes, 1-D integer
    tensor) converted one slice at a time."""

    def __init__(self, tokens, device: torch.device):
        self.tokens, self.device = tokens, device
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
            self.batch_size, self.length = tokens.shape
            return
        if isinstance(tokens, (bytes, bytearray, memoryview)):
            self.tokens = np.frombuffer(tokens, dtype=np.uint8)
        elif isinstance(tokens, torch.Tensor):
            if tokens.dim() != 1 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
                raise ValueError(
                    "TTTE2EModel.prefill: tokens must be an int64 tensor [batch, length] or a 1-D integer token "
                    f"source, got a tensor {tokens.dtype}{list(tokens.shape)}"
                )
        elif not (isinstance(tokens, np.ndarray) and tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer)):
            desc = f"an array {tokens.dtype}{list(tokens.shape)}" if isinstance(tokens, np.ndarray) else type(tokens)
            raise ValueError(
                "TTTE2EModel.prefill: tokens must be an int64 tensor [batch, length] or a 1-D integer token source "
                f"(numpy array or memmap, bytes, 1-D tensor), got {desc}"
            )
        self.batch_size, self.length = 1, len(self.tokens)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Tokens lo..hi-1 as an int64 tensor [B, hi - lo] on the device."""
        if isinstance(self.tokens, torch.Tensor) and self.tokens.dim() == 2:
            return self.tokens[:, lo:hi]
        if isinstance(self.tokens, np.ndarray):  # a copy: a read-only memmap cannot back a tensor
            return torch.from_numpy(np.array(self.tokens[lo:hi], dtype=np.int64)).to(self.device)[None]
        return self.tokens[lo:hi].to(self.device, torch.int64)[None]


class TTTE2EModel(nn.Module):
    """TTT-E2E: a sliding-window Transformer whose suffix blocks' dynamic MLPs train on the context (docs/model.md).

    ``ops="package"`` runs the fused ops of :mod:`ttt_kernels.ops`, ``ops="reference"`` the same code on the
    pure-PyTorch references (:attr:`ops` can be changed later). ``check_finite``: meta_loss, prefill and decode
    fail with a RuntimeError when a loss or logit is NaN or infinite (a NaN parameter, an exploding step) instead of
    returning it; checked where the tensors are, without a host synchronization (asynchronously on a GPU).
    """

    def __init__(self, config: TTTE2EConfig, *, ops: str = "package", check_finite: bool = False):
        super().__init__()
        config.validate()
        self.config = config
        self.ops = ops
        self.check_finite = bool(check_finite)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)  # tied with the LM head
        self.blocks = nn.ModuleList(_Block(c, suffix=i >= c.num_prefix_layers) for i in range(c.num_layers))
        self.norm_f = _Norm(c.hidden_size)
        # RoPE rotations (_rope_rotations): (pos0, n, hd, device, dtype) -> the range's table, copied from
        # (segment, hd, device, dtype) -> the table of a segment's _ROPE_SEGMENT positions.
        self._rope_cache = {}
        self._rope_segments = {}
        # meta_loss(checkpoint="auto"): (B, slice size, dtype, device) -> bytes per token the graph of a prefix slice
        # holds, measured on the last slice of each call (the next calls size what they keep with it).
        self._prefix_token_bytes = {}
        self.reset_parameters()

    @property
    def ops(self) -> str:
        return self._opset.name

    @ops.setter
    def ops(self, name: str) -> None:
        if name not in OPSETS:
            raise ValueError(f"TTTE2EModel: ops must be one of {sorted(OPSETS)}, got {name!r}")
        self._opset = OPSETS[name]

    def reset_parameters(self) -> None:
        """N(0, init_std) for the embedding and every linear weight (the dynamic MLP's W_0 too), 1 for norms."""
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, self.config.init_std)
            elif isinstance(mod, _Norm):
                nn.init.ones_(mod.weight)

    # Tuples, not ModuleList slices: slicing a ModuleList builds a new module (8 us; a tuple of the blocks: 1 us), and
    # the chunk step reads these several times per chunk.
    @property
    def prefix_blocks(self) -> tuple:
        return tuple(self.blocks)[: self.config.num_prefix_layers]

    @property
    def suffix_blocks(self) -> tuple:
        return tuple(self.blocks)[self.config.num_prefix_layers :]

    def initial_fast_weights(self, batch_size: int) -> tuple:
        """W_0 for every sequence: (w1, w3, w2) per suffix block, [batch_size, ...] copies in their own contiguous
        storage (the batched ops take them as they are; their gradients are summed into W_0), float32 (float64)."""
        dt = self._fast_dtype()
        return tuple(
            w.to(dt).unsqueeze(0).repeat(batch_size, 1, 1)
            for blk in self.suffix_blocks
            for w in (blk.prime.w1.weight, blk.prime.w3.weight, blk.prime.w2.weight)
        )

    # ---------------------------------------------------------------------------------------------------------------
    # Building blocks

    def _fast_dtype(self) -> torch.dtype:
        return compute_dtype(self.embed.weight.dtype)

    def _norm(
        self, x: torch.Tensor, norm: _Norm, residual: torch.Tensor | None = None, rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        """RMSNorm of x [..., d]; ``residual + RMSNorm(x)`` in one op if given (a post-norm residual connection), or
        the norm turned by the RoPE table ``rope`` (_rope_rotations) in one op (QK-norm and RoPE)."""
        return self._opset.rms_norm(x, norm.weight, self.config.norm_eps, residual, rope)

    def _rope_rotations(self, pos0, n: int, hd: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(cos, sin) of pos theta^(-2j/hd) for the positions pos0 .. pos0+n-1, [n, hd/2, 2] of ``dtype``: the
        interleaved RoPE of pairs (x[2j], x[2j+1]) that rms_norm(..., rope=) applies after the QK-norm.

        Every block's q and k at these positions share one table. The tables of the last few ranges are cached
        (one chunk's blocks, the recomputation of a chunk in the backward, the next chunks hit them), copied from
        cached segments of _ROPE_SEGMENT positions: a new range is one slice and copy, a range across two segments
        is computed on its own."""
        if isinstance(pos0, torch.Tensor):  # a 0-d int64 tensor (a captured chunk step): computed on the device
            return self._rope_table(pos0 + torch.arange(n, device=device), hd, dtype)
        key = (pos0, n, hd, device, dtype)
        table = self._rope_cache.get(key)
        if table is None:
            with torch.inference_mode(False):  # not inference tensors: meta_loss saves them for backward
                table = self._new_rope_rotations(pos0, n, hd, device, dtype)
            _bounded_insert(self._rope_cache, key, table, 64)
        return table

    def _new_rope_rotations(self, pos0: int, n: int, hd: int, device: torch.device, dtype: torch.dtype):
        """_rope_rotations' table of a range not cached, from a cached segment where it falls inside one."""
        segment = pos0 // _ROPE_SEGMENT
        if (pos0 + n - 1) // _ROPE_SEGMENT != segment:
            return self._rope_table(torch.arange(pos0, pos0 + n, device=device), hd, dtype)
        start = segment * _ROPE_SEGMENT
        segment_key = (segment, hd, device, dtype)
        whole = self._rope_segments.get(segment_key)
        if whole is None:
            whole = self._rope_table(torch.arange(start, start + _ROPE_SEGMENT, device=device), hd, dtype)
            _bounded_insert(self._rope_segments, segment_key, whole, 4)
        # Its own storage: autograd saves it, and the checkpointing budget counts saved storages.
        return whole[pos0 - start : pos0 - start + n].clone()

    def _rope_table(self, positions: torch.Tensor, hd: int, dtype: torch.dtype) -> torch.Tensor:
        """(cos, sin) of pos theta^(-2j/hd) for int64 positions [n]: [n, hd/2, 2] of ``dtype``."""
        dt = torch.float32 if self.config.rope_float32_angles else torch.float64
        inv_freq = 1.0 / self.config.rope_theta ** (torch.arange(0, hd, 2, dtype=dt, device=positions.device) / hd)
        angles = positions.to(dt)[:, None] * inv_freq  # [n, hd/2]
        return torch.stack((angles.cos(), angles.sin()), -1).to(dtype)

    def _attention(self, blk: _Block, x: torch.Tensor, pos0: int, past: list) -> tuple[torch.Tensor, KV]:
        """Sliding-window attention of x's n tokens (positions pos0..) over the keys in ``past`` (earlier positions,
        a list of key/value pairs in order, at most k-1 of them used) and their own keys. Returns (out, (k, v))."""
        c, att = self.config, blk.attn
        bsz, n, _ = x.shape
        q, k, v = self._project_qkv(att, x)
        # QK-norm and RoPE (pairs rotated in float32 for 16-bit activations), one op each.
        rope = self._rope_rotations(pos0, n, c.head_dim, x.device, compute_dtype(x.dtype))
        q = self._norm(q, att.q_norm, rope=rope)
        k = self._norm(k, att.k_norm, rope=rope)
        keys, values = self._windowed_kv(past, k, v)
        out = self._opset.swa_attention(q, keys, values, c.window)
        return F.linear(out.reshape(bsz, n, -1), att.wo.weight), (k, v)

    def _project_qkv(self, att: _Attention, x: torch.Tensor) -> tuple:
        """q [B, n, H, hd], k and v [B, n, Hkv, hd] of x [B, n, d] (views of contiguous products)."""
        c = self.config
        bsz, n, _ = x.shape
        q = F.linear(x, att.wq.weight).view(bsz, n, c.num_heads, c.head_dim)
        k = F.linear(x, att.wk.weight).view(bsz, n, c.kv_heads, c.head_dim)
        v = F.linear(x, att.wv.weight).view(bsz, n, c.kv_heads, c.head_dim)
        return q, k, v

    def _windowed_kv(self, past: list, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """The keys and values n queries read: the earlier pairs in ``past`` followed by the chunk's own k, v
        [B, n, Hkv, hd]. Callers pass the window before the chunk (k-1 positions) and at most a chunk (b-1) more:
        the keys before the window are masked by the attention, and not slicing them off spares the backward a
        zero-filled gradient of the whole concatenation per chunk (a slice's backward)."""
        if not past:
            return k, v
        return torch.cat([p[0] for p in past] + [k], 1), torch.cat([p[1] for p in past] + [v], 1)

    def _block(self, blk: _Block, x: torch.Tensor, pos0: int, past: list, fast=None) -> tuple:
        """One block over x [B, n, d]; ``fast``: this suffix block's (w1, w3, w2), batched (fast weights) or not
        (W_0 itself, TTT off). Returns (x, (k, v))."""
        # A chunk of a batch is a strided slice: one copy here, not one per op that needs contiguous rows (the norm,
        # its fused residual add).
        x = x.contiguous()
        a, kv = self._attention(blk, self._norm(x, blk.seq_norm), pos0, past)
        x = self._norm(a, blk.seq_post_norm, residual=x)
        if fast is not None:
            # Fast weights [B, ...] (each sequence its own: one batched op) or W_0 itself.
            y = self._opset.swiglu_mlp(self._norm(x, blk.prime_norm), *fast)
            x = self._norm(y, blk.prime_post_norm, residual=x)
        y = self._opset.swiglu_mlp(self._norm(x, blk.ffn_norm), blk.ffn.w1.weight, blk.ffn.w3.weight, blk.ffn.w2.weight)
        return self._norm(y, blk.ffn_post_norm, residual=x), kv

    def _static_fast(self, blk: _Block):
        """The dynamic MLP's weights when TTT is off: W_0, unbatched."""
        return (blk.prime.w1.weight, blk.prime.w3.weight, blk.prime.w2.weight)

    def _suffix(self, h: torch.Tensor, pos0: int, fast: tuple, past: list) -> tuple:
        """Suffix blocks over h [B, n, d] (prefix output at positions pos0..) with fast weights ``fast``; ``past[j]``
        the earlier key/value pairs of suffix block j. Returns (x, [kv per block])."""
        kvs = []
        for j, blk in enumerate(self.suffix_blocks):
            h, kv = self._block(blk, h, pos0, past[j], fast[3 * j : 3 * j + 3])
            kvs.append(kv)
        return h, kvs

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and tied LM head, in float32 (float64 for a float64 model): [B, n, d] -> [B, n, V]."""
        logits = F.linear(self._norm(x, self.norm_f), self.embed.weight)
        return logits.to(compute_dtype(logits.dtype))

    def _token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of each target [B, n] under logits [B, n, V] (0 where masked) and the mask of counted
        targets."""
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
        if self.config.bos_token_id is None:
            return ce, torch.ones_like(targets, dtype=torch.bool)
        valid = targets != self.config.bos_token_id
        return ce * valid, valid

    def _chunk_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sequence loss of a chunk under its logits [B, n, V]: sum of CE over its valid targets / their number
        (0 if none). [B]."""
        ce, valid = self._token_losses(logits, targets)
        return ce.sum(1) / valid.sum(1).clamp(min=1)

    def _inner_step(
        self, fast: tuple, loss: torch.Tensor, lr: float, create_graph: bool, retain_graph: bool = False
    ) -> tuple:
        """W - lr * clip(dloss/dW), per sequence (loss [B]: sequence s's loss depends on its fast weights only).
        ``create_graph``: the step is differentiable through the gradient (second order); ``retain_graph``: the loss's
        graph is kept for the outer gradient."""
        with phase("ttt.inner_step"):
            grads = torch.autograd.grad(
                loss.sum(), fast, create_graph=create_graph, retain_graph=retain_graph or create_graph
            )
            update = self._opset.clip_sgd_update(list(fast), list(grads), lr, self.config.inner_max_norm, batched=True)
        return tuple(update)

    def _embed_prefix(self, tokens: torch.Tensor, pos0: int = 0, kv: list | None = None) -> tuple:
        """Embedding and prefix blocks over tokens [B, n]; kv[l]: earlier key/value pairs of block l (or None).
        Returns (h [B, n, d], [(k, v) per prefix block])."""
        with phase("ttt.embedding"):
            h = self.embed(tokens)
        kvs = []
        with phase("ttt.prefix"):
            for i, blk in enumerate(self.prefix_blocks):
                h, kv_i = self._block(blk, h, pos0, [kv[i]] if kv and kv[i] is not None else [])
                kvs.append(kv_i)
        return h, kvs

    # ---------------------------------------------------------------------------------------------------------------
    # Training

    def _check_tokens(self, tokens: torch.Tensor, what: str, min_len: int) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.int64:
            desc = f"{tokens.dtype}{list(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens)
            raise ValueError(f"TTTE2EModel.{what}: tokens must be an int64 tensor [batch, length], got {desc}")
        if tokens.shape[0] < 1 or tokens.shape[1] < min_len:
            raise ValueError(
                f"TTTE2EModel.{what}: tokens must have >= 1 sequence of >= {min_len} tokens, got shape "
                f"{tuple(tokens.shape)}"
            )
        if tokens.device != self.embed.weight.device:
            raise ValueError(
                f"TTTE2EModel.{what}: tokens are on {tokens.device}, the model on {self.embed.weight.device}"
            )
        # Checked where the tokens are, without a host synchronization (asynchronous on a GPU).
        in_range = ((tokens >= 0) & (tokens < self.config.vocab_size)).all()
        torch._assert_async(
            in_range, f"TTTE2EModel.{what}: token ids must be in [0, vocab_size={self.config.vocab_size})"
        )

    def meta_loss(
        self,
        tokens: torch.Tensor,
        inner_lr: float = 1.0,
        *,
        first_order: bool = False,
        checkpoint: bool | str = "auto",
        checkpoint_group: int = 1,
        checkpoint_prefix: bool | None = None,
        checkpoint_prefix_group: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The outer (meta-learning) loss of a batch and the per-chunk losses.

        tokens [B, T+1] int64: inputs tokens[:, :-1], targets tokens[:, 1:], T a multiple of b. Chunk i is predicted
        with the fast weights W_{i-1}, then W_i = W_{i-1} - inner_lr * clip(g_i) (per sequence). Returns (loss, the
        mean over sequences and chunks; per_chunk_losses [B, T/b]). loss.backward() differentiates through every
        inner step: second order, unless ``first_order`` (the inner gradients are then treated as constants).

        ``checkpoint``: True keeps only each chunk's inputs (prefix output, fast weights, earlier keys/values) and
        recomputes the chunk in the backward; False keeps every chunk's graph. ``"auto"`` (the default) keeps the
        graphs of as many of the last chunks as fit in a memory budget, what True holds (so that the bytes held stay
        within about 2x of True's), and recomputes the chunks before them: the first chunk runs without
        recomputation and the bytes its graph saves set how many more fit; graphs of 64 MiB in all are kept in any
        case (docs/model.md, "Checkpointing"). ``checkpoint_group`` > 1 (with ``checkpoint=True``) adds a second
        level: only every ``checkpoint_group``-th chunk's fast weights are kept; a group of chunks is recomputed in
        the backward, chunk by chunk. ``checkpoint_prefix``: run the prefix blocks in slices of
        ``checkpoint_prefix_group`` chunks (default: the chunks covering two windows, ceil(2k/b)), each but the last
        recomputed in the backward (under "auto", not those that fit the 64 MiB floor, as measured in the previous
        call of the same shape): a slice
        keeps only its input (the embedding of its tokens) and, per prefix block, the keys/values of its last k-1
        positions (the window the next slices read), so the prefix blocks' activations are never held for the whole
        sequence. With ``config.ttt`` False (the baselines) every block is a prefix block in this sense. The default
        (None) slices with TTT (the recomputation costs little next to the inner loop's second-order work) and not
        with TTT off (there it adds a forward pass of every block). Checkpointing does not change the results.
        """
        c = self.config
        self._check_tokens(tokens, "meta_loss", 2)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        bsz, t = inputs.shape
        b = c.mini_batch_size
        if t % b != 0:
            raise ValueError(
                f"TTTE2EModel.meta_loss: the number of input tokens ({t} = tokens.shape[1] - 1) must be "
                f"a multiple of mini_batch_size ({b})"
            )
        check_int(checkpoint_group, "TTTE2EModel.meta_loss: checkpoint_group")
        if checkpoint not in (True, False, "auto"):
            raise ValueError(f"TTTE2EModel.meta_loss: checkpoint must be True, False or 'auto', got {checkpoint!r}")
        if checkpoint_group > 1 and checkpoint is not True:
            raise ValueError(
                f"TTTE2EModel.meta_loss: checkpoint_group > 1 needs checkpoint=True, got checkpoint={checkpoint!r}"
            )
        if checkpoint_prefix is None:
            checkpoint_prefix = c.ttt
        if checkpoint_prefix_group is None:
            checkpoint_prefix_group = -(-2 * c.window // b)
        else:
            check_int(
                checkpoint_prefix_group, "TTTE2EModel.meta_loss: checkpoint_prefix_group", alternatives=" or None"
            )
        n_chunks = t // b

        # Blocks without inner steps: the prefix, or every block with TTT off.
        blocks = list(self.prefix_blocks if c.ttt else self.blocks)
        budgeted = checkpoint == "auto" and c.ttt and torch.is_grad_enabled()
        prefix_saved = _SavedBytes()  # what the prefix's graph holds, part of "auto"'s budget
        kept_slice_bytes = 0  # of it, the graphs of prefix slices before the last that "auto" keeps (within the floor)
        with prefix_saved if budgeted else contextlib.nullcontext():
            with phase("ttt.embedding"):
                h = self.embed(inputs)
            if checkpoint_prefix and blocks and torch.is_grad_enabled():
                h, kept_slice_bytes = self._sliced_blocks(blocks, h, checkpoint_prefix_group * b, budgeted)
            else:
                with phase("ttt.prefix"):
                    for blk in blocks:
                        h = self._block(blk, h, 0, [], self._static_fast_or_none(blk))[0]
        if not c.ttt:
            ce, valid = self._token_losses(self._logits(h), targets)
            per_chunk = ce.view(bsz, n_chunks, b).sum(2) / valid.view(bsz, n_chunks, b).sum(2).clamp(min=1)
            self._assert_finite(per_chunk, "meta_loss", "loss")
            return per_chunk.mean(), per_chunk

        fast = self.initial_fast_weights(bsz)
        hist = [[] for _ in range(c.num_suffix_layers)]
        meta = _MetaArgs(inner_lr, first_order, -(-(c.window - 1) // b), self._chunk_params())
        if budgeted:
            losses = self._budgeted_segments(h, targets, fast, meta, prefix_saved.total - kept_slice_bytes)
        else:
            if checkpoint is True:
                levels = (checkpoint_group, 1) if checkpoint_group > 1 else (1,)
            else:
                levels = ()
            losses, _, _ = self._segment(h, targets, 0, fast, hist, meta, False, torch.is_grad_enabled(), levels)
        per_chunk = torch.stack(losses, 1)
        self._assert_finite(per_chunk, "meta_loss", "loss")
        return per_chunk.mean(), per_chunk

    def forward(self, tokens: torch.Tensor, inner_lr: float = 1.0, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """Calling the model is :meth:`meta_loss` (same arguments, same result): one forward for the whole meta-step,
        the unit that DistributedDataParallel and fully_shard wrap (ttt_kernels.distributed)."""
        return self.meta_loss(tokens, inner_lr, **options)

    def _assert_finite(self, t: torch.Tensor, what: str, name: str) -> None:
        if self.check_finite:
            torch._assert_async(
                torch.isfinite(t).all(), f"TTTE2EModel.{what}: non-finite {name} (a NaN or infinite parameter or step)"
            )

    def _budgeted_segments(self, h, targets, fast: tuple, meta: _MetaArgs, prefix_bytes: int) -> list:
        """The inner loop of ``checkpoint="auto"`` over h [B, n*b, d]: chunk 0 keeps its graph, which is measured
        (G bytes); with C the bytes a recomputed chunk keeps (its fast weights and keys/values) and P those of the
        prefix, the last k chunks keep their graphs, k G <= max(P + n C, 64 MiB) (what recomputing every chunk
        holds; _kept_chunks), and the chunks between are recomputed. Kept graphs of the last chunks are
        freed first by the backward, before any recomputation. Returns [loss [B] per chunk]."""
        b, s = self.config.mini_batch_size, self.config.num_suffix_layers
        n = h.shape[1] // b
        h_first, h_rest = h.split([b, h.shape[1] - b], 1)
        with _SavedBytes(exclude={h.untyped_storage().data_ptr()}) as first:
            losses, fast, kvs = self._segment(h_first, targets[:, :b], 0, fast, [[]] * s, meta, n > 1, True, ())
        hist = [_last(kvs[j], meta.n_hist) for j in range(s)]
        chunk_bytes = sum(t.numel() * t.element_size() for t in (*fast, *_flatten_kv([kv[-1:] for kv in kvs])))
        split = n - self._kept_chunks(n, prefix_bytes, chunk_bytes, first.total)
        # chunks [1, split) are recomputed, [split, n) keep their graphs
        h_parts = h_rest.split([(split - 1) * b, (n - split) * b], 1)
        for (lo, hi, levels), h_part in zip(((1, split, (1,)), (split, n, ())), h_parts):
            if lo == hi:
                continue
            seg_losses, fast, kvs = self._segment(
                h_part, targets[:, lo * b : hi * b], lo * b, fast, hist, meta, hi < n, True, levels
            )
            losses += seg_losses
            hist = [_last(hist[j] + kvs[j], meta.n_hist) for j in range(s)]
        return losses

    @staticmethod
    def _kept_chunks(n: int, prefix_bytes: int, chunk_bytes: int, graph_bytes: int) -> int:
        """How many of chunks 1..n-1 keep their graphs under checkpoint="auto": k graph_bytes <= the budget, what
        recomputing every chunk holds (prefix_bytes + n chunk_bytes), and at least _AUTO_MIN_BUDGET (small problems
        keep every graph: their peak is set by the working set, not by what the graph holds)."""
        budget = max(prefix_bytes + n * chunk_bytes, _AUTO_MIN_BUDGET)
        return min(n - 1, budget // max(graph_bytes, 1))

    def _static_fast_or_none(self, blk: _Block):
        """W_0 for a block with a dynamic MLP run without inner steps (TTT off), None for a prefix block."""
        return self._static_fast(blk) if hasattr(blk, "prime") else None

    def _sliced_blocks(self, blocks: list, h: torch.Tensor, size: int, budgeted: bool = False) -> tuple:
        """``blocks`` (no inner steps) over h [B, T, d] from position 0, in slices of ``size`` positions, each but the
        last a _Recompute: it keeps its input slice of h and the keys/values of its last k-1 positions per block (the
        window the following slices read; their gradients come back through those slices), and recomputes the rest
        in the backward. ``budgeted`` (checkpoint="auto"): the slices just before the last also keep their graphs
        (not recomputed) as far as _AUTO_MIN_BUDGET holds them, sized by the bytes per token the last slice's graph
        held in an earlier call of the same shape (the first call measures). Returns (the output [B, T, d], the bytes
        the graphs of those kept slices hold)."""
        t, keep = h.shape[1], self.config.window - 1
        params = [p for blk in blocks for p in blk.parameters() if p.requires_grad]
        n_slices = -(-t // size)
        key = (h.shape[0], size, h.dtype, h.device)
        token_bytes = self._prefix_token_bytes.get(key) if budgeted else None
        plain_from = n_slices - 1  # slices from this one on keep their graphs
        if token_bytes:
            plain_from -= min(n_slices - 1, int(_AUTO_MIN_BUDGET // (token_bytes * size)))
        hist = [[] for _ in blocks]  # per block: (k, v) tails of the earlier slices, in order
        outs, kept_bytes = [], 0
        # One split (its backward: one concatenation), not a slice per piece (each slice's backward: zeros of all of
        # h); the same in _segment and _budgeted_segments.
        for i, (lo, piece) in enumerate(zip(range(0, t, size), h.split(size, 1))):
            past = [_window(pieces, keep) for pieces in hist]
            run = self._slice_runner(blocks, lo, len(past[0]))
            args = (piece, *_flatten_kv(past))
            with phase(f"ttt.prefix_slice {i}"):
                if i < plain_from:
                    res = _Recompute.apply(run, len(args), *args, *params)
                else:  # the last slice's backward comes first: recomputing it would gain nothing
                    with _SavedBytes(exclude={h.untyped_storage().data_ptr()}) as saved:
                        res = run(*args, create_graph=True)
                    if i < n_slices - 1:
                        kept_bytes += saved.total
                    elif budgeted:
                        _bounded_insert(self._prefix_token_bytes, key, saved.total / (t - lo), 16)
            outs.append(res[0])
            for j, pieces in enumerate(hist):
                pieces.append((res[1 + 2 * j], res[2 + 2 * j]))
        return (torch.cat(outs, 1) if len(outs) > 1 else outs[0]), kept_bytes

    def _slice_runner(self, blocks: list, pos0: int, n_past: int):
        """blocks over one slice, for _Recompute: run(h, *past k/v, create_graph) -> (h, *(k, v) tail per block).
        The forward needs no graph (no inner gradient here); the recomputation in the backward builds one."""
        keep = self.config.window - 1

        def tail(x):  # the last k-1 positions, in their own storage (a view would keep the whole slice's)
            return x[:, x.shape[1] - keep :].clone() if x.shape[1] > keep else x

        def run(h, *flat, create_graph):
            past = _unflatten_kv(flat, len(blocks), n_past)
            tails = []
            with torch.set_grad_enabled(create_graph):
                for blk, p in zip(blocks, past):
                    h, (k, v) = self._block(blk, h, pos0, p, self._static_fast_or_none(blk))
                    tails += [tail(k), tail(v)]
            return (h, *tails)

        return run

    def _chunk_params(self) -> list:
        """Parameters the suffix chunks read directly: all but the prefix blocks' and W_0 (which enters as the fast
        weights)."""
        w0 = {id(w) for blk in self.suffix_blocks for w in blk.prime.parameters()}
        params = [p for blk in self.suffix_blocks for p in blk.parameters() if id(p) not in w0]
        return [p for p in (*params, self.norm_f.weight, self.embed.weight) if p.requires_grad]

    def _segment(
        self,
        h,
        targets,
        pos0: int,
        fast: tuple,
        hist: list,
        meta: _MetaArgs,
        step_last: bool,
        create_graph: bool,
        levels: tuple,
    ) -> tuple:
        """Inner loop over the chunks of h [B, n*b, d] (prefix output at positions pos0..) and targets [B, n*b],
        starting from ``fast``; hist[j]: the earlier (k, v) chunk pairs of suffix block j (the last meta.n_hist).

        ``levels`` are checkpoint group sizes in chunks, outermost first: each group of levels[0] chunks runs as
        one _Recompute (which recomputes it, with levels[1:], in the backward); () runs the chunks plainly.
        ``step_last``: take the last chunk's inner step (its W is never used otherwise). ``create_graph``: the outer
        gradient will be taken (the inner gradients then get a graph, unless meta.first_order).
        Returns ([loss [B] per chunk], fast, [[(k, v) per chunk] per suffix block]).
        """
        b, s = self.config.mini_batch_size, self.config.num_suffix_layers
        n = h.shape[1] // b
        size = levels[0] if levels else 1
        losses, new_kv = [], [[] for _ in range(s)]
        for g0, h_group in zip(range(0, n, size), h.split(size * b, 1)):
            count = min(size, n - g0)
            lo, hi = g0 * b, (g0 + count) * b
            past = [_last(hist[j] + new_kv[j], meta.n_hist) for j in range(s)]
            step = step_last or g0 + count < n
            if levels:
                run = self._segment_runner(pos0 + lo, len(past[0]), count, meta, step, levels[1:])
                args = (h_group, targets[:, lo:hi], *fast, *_flatten_kv(past))
                outs = _Recompute.apply(run, len(args), *args, *meta.params)
                group_losses, fast, kvs = self._unflatten_segment(outs, count, step, fast)
            else:
                loss, fast, kv = self._meta_chunk(
                    h_group, targets[:, lo:hi], pos0 + lo, fast, past, meta, step, create_graph
                )
                group_losses, kvs = [loss], [[x] for x in kv]
            losses.extend(group_losses)
            for j in range(s):
                new_kv[j].extend(kvs[j])
        return losses, fast, new_kv

    def _segment_runner(self, pos0: int, n_past: int, count: int, meta: _MetaArgs, step_last: bool, levels: tuple):
        """_segment over flat tensors, for _Recompute: run(h, targets, *fast, *past k/v, create_graph) ->
        (*losses, [*fast,] *(k, v) per suffix block per chunk)."""
        s = self.config.num_suffix_layers

        def run(h, targets, *flat, create_graph):
            fast, past = flat[: 3 * s], _unflatten_kv(flat[3 * s :], s, n_past)
            losses, fast, kvs = self._segment(h, targets, pos0, fast, past, meta, step_last, create_graph, levels)
            return (*losses, *(fast if step_last else ()), *_flatten_kv(kvs))

        return run

    def _unflatten_segment(self, outs: tuple, count: int, step: bool, fast: tuple) -> tuple:
        s = self.config.num_suffix_layers
        losses, rest = list(outs[:count]), outs[count:]
        if step:
            fast, rest = rest[: 3 * s], rest[3 * s :]
        return losses, fast, _unflatten_kv(rest, s, count)

    def _meta_chunk(
        self, h, targets, pos0: int, fast: tuple, past: list, meta: _MetaArgs, step: bool, create_graph: bool
    ) -> tuple:
        """One chunk of the inner loop: its loss [B] under ``fast``, the next fast weights (if ``step``) and its
        (k, v) per suffix block. Without an outer gradient (torch.no_grad) it still needs the inner one.

        The package's ops run the inner gradient written out (model/chunk_step.py), recorded by autograd when the
        outer gradient goes through it (``create_graph`` and second order); the reference ops run it under
        torch.autograd.grad, the definition the tests compare it with."""
        if self._opset.name == "package":
            return self._explicit_meta_chunk(h, targets, pos0, fast, past, meta, step, create_graph)
        if not torch.is_grad_enabled():
            # Fast weights made under no_grad (W_0's expand-views) may report requires_grad without being part of a
            # graph: the inner gradient starts from detached copies.
            fast = tuple(w.detach() for w in fast)
            with torch.enable_grad():
                loss, fast, kvs = self._meta_chunk(h, targets, pos0, fast, past, meta, step, False)
            return loss.detach(), tuple(w.detach() for w in fast), [(k.detach(), v.detach()) for k, v in kvs]
        if step:  # the inner gradient needs fast weights that require grad, even if W_0 is frozen
            fast = tuple(w if w.requires_grad else w.detach().requires_grad_() for w in fast)
        second_order = create_graph and not meta.first_order
        with phase(f"ttt.chunk {pos0 // self.config.mini_batch_size}"):
            x, kvs = self._suffix(h, pos0, fast, past)
            loss = self._chunk_loss(self._logits(x), targets)
            if step:
                fast = self._inner_step(fast, loss, meta.inner_lr, second_order, retain_graph=create_graph)
        return loss, fast, kvs

    def _explicit_meta_chunk(
        self, h, targets, pos0: int, fast: tuple, past: list, meta: _MetaArgs, step: bool, create_graph: bool
    ) -> tuple:
        """_meta_chunk on the package's ops. Without ``create_graph`` (no outer gradient, or the first pass of a
        recomputed chunk, whose outputs are detached) nothing is recorded; first order records the forward and the
        update but not the inner gradient (a constant, as torch.autograd.grad without create_graph gives it)."""
        record = create_graph and torch.is_grad_enabled()
        with torch.set_grad_enabled(record), phase(f"ttt.chunk {pos0 // self.config.mini_batch_size}"):
            x, tapes = suffix_forward(self, h, pos0, fast, past)
            logits, rnf = head(self, x)
            loss = self._chunk_loss(logits, targets)
            if step:
                with torch.set_grad_enabled(record and not meta.first_order), phase("ttt.inner_step"):
                    grads = fast_weight_grads(self, tapes, x, rnf, logits, targets, fast)
                update = self._opset.clip_sgd_update
                fast = tuple(update(list(fast), grads, meta.inner_lr, self.config.inner_max_norm, batched=True))
        return loss, fast, [(t.kn, t.v) for t in tapes]

    # ---------------------------------------------------------------------------------------------------------------
    # Inference

    def new_state(self, batch_size: int, *, inner_lr: float = 1.0, cuda_graph: bool = False) -> TTTE2EState:
        """An empty inference state: fast weights W_0, no keys, nothing pending. ``cuda_graph``: run the chunk step
        as a CUDA graph once the windows are full (a CUDA model only; the same results, far fewer launches)."""
        check_int(batch_size, "TTTE2EModel.new_state: batch_size")
        if cuda_graph and self.embed.weight.device.type != "cuda":
            raise ValueError(
                f"TTTE2EModel: cuda_graph=True needs a model on a CUDA device, it is on {self.embed.weight.device}"
            )
        with torch.no_grad():
            fast = self.initial_fast_weights(batch_size) if self.config.ttt else None
        return TTTE2EState(
            batch_size=batch_size,
            pos=0,
            kv=[None] * self.config.num_layers,
            fast=fast,
            pending_h=None,
            pending_tokens=None,
            pending_kv=[None] * self.config.num_suffix_layers,
            logits=None,
            inner_lr=float(inner_lr),
            cuda_graph=bool(cuda_graph),
        )

    def prefill(
        self,
        tokens,
        state: TTTE2EState | None = None,
        *,
        inner_lr: float = 1.0,
        return_logits: bool = False,
        slice_tokens: int = PREFILL_SLICE_TOKENS,
        cuda_graph: bool = False,
        progress=None,
    ):
        """Reads a prompt (continuing ``state`` if given, else from a new state with ``inner_lr`` and ``cuda_graph``,
        see :meth:`new_state`). ``progress``: called as progress("prefill", tokens read, n) after each slice.

        ``tokens``: an int64 tensor [B, n] on the model's device, or one sequence as a 1-D token source read a slice
        at a time (a 1-D integer numpy array or ``np.memmap``, ``bytes``, or a 1-D integer tensor): a prompt of any
        length in memory bounded by the slice.

        The prompt is read in slices of ``slice_tokens`` tokens, each continuing the state of the previous one (the
        same logits and fast weights as one pass, up to rounding): prefix blocks run over a slice at a time, suffix
        blocks chunk by chunk with one first-order TTT step for every chunk of b tokens whose next token is known.
        Slices keep the activations of the prefix blocks ([B, slice, mlp_size] per block) cache-sized and the memory
        of a long prompt bounded (one pass over 64K tokens was 1.6x slower per token: docs/model.md). Returns the
        state (its ``logits`` are the last token's), or (state, logits [B, n, V]) with ``return_logits`` (which
        holds every position's logits: for a long prompt, prefill slice by slice and keep what is needed instead).

        On the package's ops prefill and decode run under ``torch.inference_mode`` (see :meth:`_inference`): the
        logits and the state's tensors are inference tensors.
        """
        with self._inference():
            return self._prefill(tokens, state, inner_lr, return_logits, slice_tokens, cuda_graph, progress)

    def _prefill(self, tokens, state, inner_lr: float, return_logits: bool, slice_tokens, cuda_graph: bool, progress):
        check_int(slice_tokens, "TTTE2EModel.prefill: slice_tokens")
        source = TokenSource(tokens, self.embed.weight.device)
        n = source.length
        piece = source.read(0, min(slice_tokens, n))
        self._check_tokens(piece, "prefill", 1)
        if state is None:
            state = self.new_state(source.batch_size, inner_lr=inner_lr, cuda_graph=cuda_graph)
        logits = []
        with phase("ttt.prefill"):
            for i in range(0, n, slice_tokens):
                if i:
                    piece = source.read(i, min(i + slice_tokens, n))
                    self._check_tokens(piece, "prefill", 1)
                logits.append(self._feed(state, piece, return_logits))
                if progress is not None:
                    progress("prefill", min(i + slice_tokens, n), n)
        return (state, torch.cat(logits, 1)) if return_logits else state

    def decode(self, state: TTTE2EState, token: torch.Tensor) -> torch.Tensor:
        """Reads one token per sequence ([B] or [B, 1]) and returns the logits of the next one, [B, V] (float32).

        Sliding-window decoding with the current fast weights; when b tokens are pending and ``token`` is the one
        after them, takes their TTT step first (exactly like a prefill chunk).
        """
        token = token.reshape(-1, 1) if isinstance(token, torch.Tensor) and token.dim() <= 1 else token
        self._check_tokens(token, "decode", 1)
        if token.shape[1] != 1:
            raise ValueError(f"TTTE2EModel.decode: expected one token per sequence, got shape {tuple(token.shape)}")
        self._check_state(state, token.shape[0])
        with self._inference(), phase("ttt.decode"):
            return self._feed(state, token, False)

    def _inference(self):
        """The grad mode of prefill and decode. On the package's ops ``torch.inference_mode``: their chunk step runs
        its backward written out (model/chunk_step.py), so nothing needs autograd, and inference mode takes every op
        call past the autograd layer (measured when the custom ops' autograd was Python: tiny prefill 1.14x at B=1,
        1.19x at B=2 against no_grad, docs/model.md). On the reference ops ``torch.no_grad``: their chunk step
        differentiates under autograd."""
        return torch.inference_mode() if self._opset.name == "package" else torch.no_grad()

    @torch.no_grad()
    def generate(
        self,
        prompt,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        *,
        inner_lr: float = 1.0,
        cuda_graph: bool = False,
        progress=None,
        include_prompt: bool = True,
    ) -> torch.Tensor:
        """Prefills ``prompt`` ([B, n], or one sequence: [n] or a 1-D token source as :meth:`prefill` takes, e.g. a
        memmap of a file) and samples ``max_new_tokens`` tokens (temperature 0: greedy; top_p: nucleus sampling),
        decoding (and test-time training) as it goes. Returns prompt + new tokens, [B, n + new] ([n + new] for one
        sequence), or only the new tokens without ``include_prompt`` (a long prompt is then never held as a tensor).
        Deterministic for a given seed. ``progress``: called as progress(phase, done, total) after each prefill slice
        (phase "prefill", in tokens) and each sampled token ("decode")."""
        check_int(max_new_tokens, "TTTE2EModel.generate: max_new_tokens", minimum=0)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"TTTE2EModel.generate: temperature must be a finite number >= 0, got {temperature!r}")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"TTTE2EModel.generate: top_p must be in (0, 1], got {top_p!r}")
        squeeze = not (isinstance(prompt, torch.Tensor) and prompt.dim() == 2)
        gen = torch.Generator(device=self.embed.weight.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        state = self.prefill(prompt, inner_lr=inner_lr, cuda_graph=cuda_graph, progress=progress)
        source = TokenSource(prompt, self.embed.weight.device)
        out, logits = [source.read(0, source.length)] if include_prompt else [], state.logits
        for i in range(max_new_tokens):
            tok = _sample(logits, temperature, top_p, gen)
            out.append(tok[:, None])
            if i + 1 < max_new_tokens:
                logits = self.decode(state, tok)
            if progress is not None:
                progress("decode", i + 1, max_new_tokens)
        result = torch.cat(out, 1) if out else logits.new_empty((state.batch_size, 0), dtype=torch.int64)
        return result[0] if squeeze else result

    def _check_state(self, state, batch_size: int) -> None:
        if not isinstance(state, TTTE2EState):
            raise ValueError(
                f"TTTE2EModel: state must be a TTTE2EState (from prefill or new_state), got {type(state).__name__}"
            )
        if state.batch_size != batch_size:
            raise ValueError(f"TTTE2EModel: the state holds {state.batch_size} sequences, got tokens for {batch_size}")

    def _keep_window(self, old: KV | None, new: KV) -> KV:
        """The last k-1 keys/values of old followed by new (all a later query can see)."""
        keep = self.config.window - 1
        k, v = new if old is None else (torch.cat((old[0], new[0]), 1), torch.cat((old[1], new[1]), 1))
        start = max(k.shape[1] - keep, 0)
        return k[:, start:], v[:, start:]

    def _feed(self, state: TTTE2EState, tokens: torch.Tensor, all_logits: bool) -> torch.Tensor:
        """Reads tokens [B, n] into the state; returns the logits of every token [B, n, V] or of the last [B, V]."""
        self._check_state(state, tokens.shape[0])
        c, b = self.config, self.config.mini_batch_size
        n_pre, n = c.num_prefix_layers, tokens.shape[1]
        if not c.ttt:
            h = self.embed(tokens)
            for i, blk in enumerate(self.blocks):
                h, kv = self._block(
                    blk, h, state.pos, [state.kv[i]] if state.kv[i] else [], self._static_fast_or_none(blk)
                )
                state.kv[i] = self._keep_window(state.kv[i], kv)
            state.pos += n
            logits = self._logits(h if all_logits else h[:, -1:])
            state.logits = logits[:, -1]
            self._assert_finite(state.logits, "prefill/decode", "logits")
            return logits if all_logits else state.logits

        h, kvs = self._embed_prefix(tokens, state.pos, state.kv[:n_pre])
        for i in range(n_pre):
            state.kv[i] = self._keep_window(state.kv[i], kvs[i])
        outs, i = [], 0
        while i < n:
            p = 0 if state.pending_h is None else state.pending_h.shape[1]
            if p == b:  # the pending chunk's last target is tokens[:, i]: its inner step
                targets = torch.cat((state.pending_tokens[:, 1:], tokens[:, i : i + 1]), 1)
                self._ttt_step(state, state.pending_h, targets, state.pos - b)
                state.pending_h = state.pending_tokens = None
                state.pending_kv = [None] * c.num_suffix_layers
            elif p == 0 and n - i > b:  # a whole chunk and its next token: forward and inner step in one pass
                outs.append(self._ttt_step(state, h[:, i : i + b], tokens[:, i + 1 : i + b + 1], state.pos, all_logits))
                state.pos, i = state.pos + b, i + b
            else:  # tokens of a chunk whose step must wait: forward with the current fast weights
                m = min(b - p, n - i)
                past = [
                    [kv for kv in (state.kv[n_pre + j], state.pending_kv[j]) if kv is not None]
                    for j in range(c.num_suffix_layers)
                ]
                x, new_kv = self._suffix(h[:, i : i + m], state.pos, state.fast, past)
                outs.append(self._logits(x if all_logits else x[:, -1:]))
                state.pending_h = _append(state.pending_h, h[:, i : i + m])
                state.pending_tokens = _append(state.pending_tokens, tokens[:, i : i + m])
                state.pending_kv = [
                    kv if old is None else (_append(old[0], kv[0]), _append(old[1], kv[1]))
                    for old, kv in zip(state.pending_kv, new_kv)
                ]
                state.pos, i = state.pos + m, i + m
        state.logits = outs[-1][:, -1]
        self._assert_finite(state.logits, "prefill/decode", "logits")
        return torch.cat(outs, 1) if all_logits else state.logits

    def _ttt_step(self, state: TTTE2EState, h, targets, pos0: int, all_logits: bool = False) -> torch.Tensor:
        """Suffix forward of one chunk (prefix output h [B, b, d] at positions pos0..) with the state's fast weights,
        its first-order inner step, and the commit of its keys/values. Returns the logits (_logits) its loss read,
        [B, b, V] with ``all_logits``, else the last position's [B, 1, V] (in its own storage: what the state keeps
        does not hold the chunk's)."""
        n_pre = self.config.num_prefix_layers
        kv = state.kv[n_pre:]
        with phase(f"ttt.chunk {pos0 // self.config.mini_batch_size}"):
            if state.cuda_graph and all(w is not None and w[0].shape[1] == self.config.window - 1 for w in kv):
                # Full windows: every later chunk step has these shapes.
                if state.chunk_graph is None or state.chunk_graph.inner_lr != state.inner_lr:
                    state.chunk_graph = _ChunkStepGraph(self, h, targets, pos0, state.fast, kv, state.inner_lr)
                logits, state.fast, state.kv[n_pre:] = state.chunk_graph(h, targets, pos0, state.fast, kv)
                return (logits if all_logits else logits[:, -1:]).clone()  # the graph's output buffer is reused
            logits, state.fast, state.kv[n_pre:] = self._chunk_step(h, targets, pos0, state.fast, kv, state.inner_lr)
        return logits if all_logits else logits[:, -1:].clone()

    def _chunk_step(self, h, targets, pos0, fast: tuple, kv: list, inner_lr: float) -> tuple:
        """_ttt_step as a function of tensors: h [B, b, d], targets [B, b], pos0 (int, or a 0-d int64 tensor), the
        fast weights and kv[j] the window of suffix block j (or None). Returns (the logits [B, b, V] of the chunk's
        loss (_logits), the next fast weights, the next windows), detached.

        The package's ops run the step with its backward written out (model/chunk_step.py); the reference ops run
        it under autograd, the definition the tests compare it with."""
        if self._opset.name == "package":
            return _explicit_chunk_step(self, h, targets, pos0, fast, kv, inner_lr)
        # Under autograd also inside inference mode (the caller's), and from a state the package's ops filled (its
        # inference tensors cannot be saved for backward: copies).
        h, targets, fast = _saveable(h), _saveable(targets), tuple(_saveable(w) for w in fast)
        kv = [None if w is None else (_saveable(w[0]), _saveable(w[1])) for w in kv]
        with torch.inference_mode(False), torch.enable_grad():
            fast = tuple(w.detach().requires_grad_() for w in fast)
            x, kvs = self._suffix(h, pos0, fast, [[w] if w is not None else [] for w in kv])
            logits = self._logits(x)
            new_fast = self._inner_step(fast, self._chunk_loss(logits, targets), inner_lr, create_graph=False)
        windows = [self._keep_window(old, (k.detach(), v.detach())) for old, (k, v) in zip(kv, kvs)]
        return logits.detach(), tuple(w.detach() for w in new_fast), windows

    # ---------------------------------------------------------------------------------------------------------------
    # Official (JAX) parameter layout

    @classmethod
    def from_official(
        cls, arrays, config: TTTE2EConfig, *, dtype: torch.dtype = torch.float32, ops: str = "package"
    ) -> "TTTE2EModel":
        """A model with the parameters of a flat mapping pytree path -> array in the official layout (docs/model.md).
        Keys may carry leading path components before ``language_model.model.`` (e.g. ``params.``)."""
        model = cls(config, ops=ops).to(dtype)
        official.load(model, arrays)
        return model

    def to_official(self, grad: bool = False) -> dict:
        """The parameters (``grad=True``: their current .grad, zeros where None) as a flat mapping
        ``language_model.model.<path>`` -> numpy array in the official layout ([in, out] weights, stacked layers)."""
        return official.dump(self, grad)


class _ChunkStepGraph:
    """The chunk step (TTTE2EModel._chunk_step) of one state captured in a CUDA graph: a few hundred kernel launches
    (suffix forward, inner backward, clipped update) replayed as one. Valid once the suffix windows are full, when
    every chunk step has the same shapes; the position enters as a device tensor (RoPE is computed in the graph).

    The graph reads its inputs from static buffers (filled by copies before each replay) and writes its outputs to
    static tensors (the fast weights and windows cloned after it, so that the state owns them; the caller copies what
    it keeps of the logits); it reads the model's parameters in place, so it sees parameter updates but not
    parameters replaced by new tensors (e.g. ``model.to``): start a new state then.
    """

    def __init__(self, model: TTTE2EModel, h, targets, pos0: int, fast: tuple, kv: list, inner_lr: float):
        self.inner_lr = inner_lr
        self.h, self.targets = h.clone(), targets.clone()
        self.pos0 = torch.tensor(pos0, dtype=torch.int64, device=h.device)
        self.fast = tuple(w.clone() for w in fast)
        self.kv = [(k.clone(), v.clone()) for k, v in kv]

        def step():
            return model._chunk_step(self.h, self.targets, self.pos0, self.fast, self.kv, inner_lr)

        # One eager run on a side stream first, as torch.cuda.graph asks: lazy initializations (library handles,
        # workspaces) must not happen during the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outs = step()

    def __call__(self, h, targets, pos0: int, fast: tuple, kv: list) -> tuple:
        """The chunk step on these inputs (shapes as at capture): (logits, next fast weights, next windows); the
        logits are the graph's output buffer, overwritten by the next replay."""
        self.h.copy_(h)
        self.targets.copy_(targets)
        self.pos0.fill_(pos0)
        for static, w in zip(
            (*self.fast, *(t for pair in self.kv for t in pair)), (*fast, *(t for p in kv for t in p))
        ):
            static.copy_(w)
        self.graph.replay()
        logits, new_fast, windows = self.outs
        return logits, tuple(w.clone() for w in new_fast), [(k.clone(), v.clone()) for k, v in windows]


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row of logits [B, V]: argmax for temperature 0, else from softmax(logits / temperature)
    restricted to the smallest set of most likely tokens whose probability reaches top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / temperature, -1)
    if top_p < 1:
        p_sorted, idx = probs.sort(-1, descending=True)
        drop = p_sorted.cumsum(-1) - p_sorted >= top_p  # tokens after the nucleus is complete
        probs = torch.zeros_like(probs).scatter(-1, idx, p_sorted.masked_fill(drop, 0))
    return torch.multinomial(probs, 1, generator=gen)[:, 0]
