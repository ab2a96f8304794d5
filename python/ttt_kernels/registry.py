"""The one table of the package's public ops. Everything that lists the ops reads it:

- ``ttt-kernels selfcheck`` runs every op (forward and gradient) on every backend this machine has;
- ``ttt-kernels bench`` and ``ttt-kernels gpucheck`` run the bench scripts it names;
- tests/test_registry.py runs every op on every backend and checks the README's op table against :func:`op_table`.

Adding an op means adding an :class:`Op` here (and its tests and bench script).
"""

import dataclasses
import functools
from collections.abc import Callable

import torch

from . import ops, reference


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    summary: str  # the README's description
    call: str  # the README's Python call
    backends: str  # the README's status column
    function: Callable
    reference: Callable
    # sample(generator, dtype) -> the positional arguments of function/reference: small random CPU inputs, floating
    # tensors in dtype (the reference runs them in float64).
    sample: Callable
    kernel_dtype: torch.dtype  # dtype of the sample on the CUDA kernels (GPU and simulator)
    benches: tuple  # bench/bench_<name>.py scripts of the op
    differentiable: bool = True  # has autograd (selfcheck then checks the gradients too)


def _rms_norm_sample(gen: torch.Generator, dtype: torch.dtype) -> tuple:
    x = torch.randn(97, 200, generator=gen)
    weight = 1 + 0.1 * torch.randn(200, generator=gen)
    residual = torch.randn(97, 200, generator=gen)
    return x.to(dtype), weight.to(dtype), 1e-6, residual.to(dtype)


def _swa_sample(gen: torch.Generator, dtype: torch.dtype) -> tuple:
    q = torch.randn(2, 37, 4, 64, generator=gen)  # GQA: 4 query heads over 2 key/value heads
    k, v = (torch.randn(2, 37, 2, 64, generator=gen) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype), 13


def _swiglu_sample(gen: torch.Generator, dtype: torch.dtype) -> tuple:
    x = torch.randn(2, 40, 64, generator=gen).to(dtype)
    w1, w3 = (0.1 * torch.randn(2, 96, 64, generator=gen) for _ in range(2))  # fast weights per sequence, float32
    w2 = 0.1 * torch.randn(2, 64, 96, generator=gen)
    return x, w1, w3, w2


def _clip_sgd_sample(gen: torch.Generator, dtype: torch.dtype) -> tuple:
    shapes = ((2, 96, 64), (2, 96, 64), (2, 64, 96))
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    # Per-sequence gradient norms about 136 and 13.6: with max_norm 20 the first sequence is clipped, the second not.
    grads = [(torch.randn(s, generator=gen) * torch.tensor([1.0, 0.1])[:, None, None]).to(dtype) for s in shapes]
    return weights, grads, 0.5, 20.0


def _sgd_gemm_sample(gen: torch.Generator, dtype: torch.dtype) -> tuple:
    weight = torch.randn(96, 64, generator=gen)  # float32 (the fast weight), operands in dtype
    a, b = torch.randn(40, 96, generator=gen).to(dtype), torch.randn(40, 64, generator=gen).to(dtype)
    return weight, a, b, torch.tensor([0.25])


def _sgd_gemm_update(weight, a, b, step):
    """sgd_gemm_update_ on a copy of weight: the updated weight."""
    updated = weight.detach().clone()
    ops.sgd_gemm_update_(updated, a.detach(), b.detach(), step.detach())
    return updated


OPS = (
    Op(
        "rms_norm",
        "RMSNorm (forward, backward, fused double backward; optional fused residual add, or RoPE after a QK-norm)",
        "`ttt_kernels.ops.rms_norm(x, weight, eps, residual=None, rope=None)`",
        "CPU + CUDA",
        ops.rms_norm,
        reference.rms_norm,
        _rms_norm_sample,
        torch.float32,
        ("rms_norm",),
    ),
    Op(
        "swa_attention",
        "Causal sliding-window attention (forward, backward, fused double backward; GQA)",
        "`ttt_kernels.ops.swa_attention(q, k, v, window)`",
        "CPU + CUDA (docs/swa.md, docs/swa_bwd_bwd.md)",
        ops.swa_attention,
        reference.swa_attention,
        _swa_sample,
        torch.bfloat16,
        ("swa", "swa_bwd_bwd"),
    ),
    Op(
        "swiglu_mlp",
        "SwiGLU MLP (forward, backward, double backward; batched fast weights `[B, m, d]`)",
        "`ttt_kernels.ops.swiglu_mlp(x, w1, w3, w2)`",
        "CPU + CUDA (CUTLASS, batched GEMMs; docs/mlp.md)",
        ops.swiglu_mlp,
        reference.swiglu_mlp,
        _swiglu_sample,
        torch.bfloat16,
        ("swiglu",),
    ),
    Op(
        "clip_sgd_update",
        "Clipped-SGD fast-weight update (global norm, one per sequence when batched)",
        "`ttt_kernels.ops.clip_sgd_update(weights, grads, lr, max_norm, batched=False)`",
        "CPU + CUDA",
        functools.partial(ops.clip_sgd_update, batched=True),
        functools.partial(reference.clip_sgd_update, batched=True),
        _clip_sgd_sample,
        torch.float32,
        ("clip_sgd",),
    ),
    Op(
        "sgd_gemm_update_",
        "SGD step by a matrix product, the update fused into the GEMM (in place, no autograd)",
        "`ttt_kernels.ops.sgd_gemm_update_(weight, a, b, step)`",
        "CPU + CUDA (CUTLASS epilogue)",
        _sgd_gemm_update,
        reference.sgd_gemm_update,
        _sgd_gemm_sample,
        torch.bfloat16,
        (),
        differentiable=False,
    ),
)


# The bench scripts: each op's, then the model's (its steps, long contexts, training on several processes).
BENCH_SCRIPTS = (*dict.fromkeys(b for op in OPS for b in op.benches), "model", "long_context", "distributed")


def op_table() -> str:
    """The README's table of the ops (Markdown), with the model's row."""
    rows = ["| op | Python | status |", "| --- | --- | --- |"]
    rows += [f"| {op.summary} | {op.call} | {op.backends} |" for op in OPS]
    rows.append("| TTT-E2E model: meta-learning, prefill, decode | `ttt_kernels.model.TTTE2EModel` | docs/model.md |")
    return "\n".join(rows)
