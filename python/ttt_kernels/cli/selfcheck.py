"""``ttt-kernels selfcheck``: runs every op of the registry (ttt_kernels.registry.OPS) on random inputs through each
backend this machine has (the CPU kernel, the CUDA kernel in the simulator, the CUDA kernel on a GPU) and prints the
largest error of its output and of its gradients against the float64 reference.
"""

import contextlib
import dataclasses
import math
import time

import torch

import ttt_kernels
from ttt_kernels import sim
from ttt_kernels.registry import OPS, Op

# Largest error allowed, relative to the largest magnitude of the expected tensor: float32 math, or the rounding of
# 16-bit outputs and operands (2^-8 for bfloat16) accumulated over a few products.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@dataclasses.dataclass
class Result:
    op: str
    backend: str
    dtype: torch.dtype
    output_error: float
    seconds: float

    gradient_error: float  # nan for an op without autograd

    @property
    def ok(self) -> bool:
        errors = [self.output_error] + ([] if math.isnan(self.gradient_error) else [self.gradient_error])
        return max(errors) <= TOLERANCE[self.dtype]


def backends() -> dict:
    """Name -> (device, context manager, whether the CUDA kernels run) of the backends this machine has."""
    found = {"cpu kernel": ("cpu", contextlib.nullcontext, False)}
    if sim.is_built():
        found["cuda kernel, simulated"] = ("cpu", sim.enabled, True)
    if torch.cuda.is_available() and ttt_kernels.build_info()["cuda_dispatch"]:
        found["cuda kernel, GPU"] = ("cuda", contextlib.nullcontext, True)
    return found


def _map(fn, args):
    """args with fn applied to every floating tensor (also inside lists)."""

    def one(a):
        if isinstance(a, list):
            return [one(x) for x in a]
        return fn(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    return [one(a) for a in args]


def _leaves(args) -> list:
    return [t for a in args for t in (a if isinstance(a, list) else [a]) if isinstance(t, torch.Tensor)]


def _outputs(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _relative_error(got: list, want: list) -> float:
    scale = max(max(w.abs().max().item() for w in want), 1e-30)
    return max((g.detach().double().cpu() - w).abs().max().item() for g, w in zip(got, want)) / scale


def check(op: Op, backend: str, seed: int = 0) -> Result:
    """Runs op on its sample through ``backend`` (a key of backends()): output and gradients (of the outputs'
    products with fixed random cotangents, w.r.t. every floating input) against the float64 reference's."""
    device, context, cuda_kernels = backends()[backend]
    dtype = op.kernel_dtype if cuda_kernels else torch.float32
    gen = torch.Generator().manual_seed(seed)
    sample = op.sample(gen, dtype)
    exact_args = _map(lambda t: t.double().requires_grad_(), sample)
    want = _outputs(op.reference(*exact_args))
    cotangents = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
    want_grads = torch.autograd.grad(want, _leaves(exact_args), cotangents) if op.differentiable else []

    args = _map(lambda t: t.to(device).requires_grad_(op.differentiable), sample)
    start = time.perf_counter()
    with context():
        got = _outputs(op.function(*args))
        got_grads = []
        if op.differentiable:
            cot = [c.to(device, g.dtype) for c, g in zip(cotangents, got)]
            got_grads = torch.autograd.grad(got, _leaves(args), cot)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    grad_error = _relative_error(list(got_grads), list(want_grads)) if op.differentiable else float("nan")
    return Result(op.name, backend, dtype, _relative_error(got, [w.detach() for w in want]), seconds, grad_error)


def selfcheck() -> bool:
    print(f"{'op':<16} {'backend':<24} {'dtype':<9} {'output error':>13} {'gradient error':>15} {'time':>9}")
    ok = True
    for op in OPS:
        for backend in backends():
            r = check(op, backend)
            ok &= r.ok
            print(
                f"{r.op:<16} {r.backend:<24} {str(r.dtype).removeprefix('torch.'):<9} {r.output_error:>13.2e} "
                f"{'-' if math.isnan(r.gradient_error) else f'{r.gradient_error:.2e}':>15} {r.seconds * 1e3:>7.1f}ms"
                + ("" if r.ok else "  FAILED")
            )
    limits = ", ".join(f"{str(d).removeprefix('torch.')} {t:g}" for d, t in TOLERANCE.items())
    print(f"errors relative to the largest expected magnitude; limits: {limits}")
    print("selfcheck:", "every op matches its reference on every backend" if ok else "FAILED")
    return ok
