"""``ttt-kernels selfcheck``: runs every op on random inputs through each backend this machine has (the CPU
kernel, the CUDA kernel in the simulator, the CUDA kernel on a GPU) and prints its largest error against the float64
reference.
"""

import contextlib
import time

import torch

import ttt_kernels
from ttt_kernels import ops, reference, sim


def _rms_norm_inputs(generator: torch.Generator) -> tuple:
    x = torch.randn(97, 200, generator=generator)
    weight = 1 + 0.1 * torch.randn(200, generator=generator)
    return x, weight, 1e-6


# op name -> (package op, reference, random-input maker); inputs are float32 CPU tensors.
CHECKS = {
    "rms_norm": (ops.rms_norm, reference.rms_norm, _rms_norm_inputs),
}


def _backends() -> dict:
    backends = {"cpu kernel": ("cpu", contextlib.nullcontext)}
    if sim.is_built():
        backends["cuda kernel, simulated"] = ("cpu", sim.enabled)
    if torch.cuda.is_available() and ttt_kernels.build_info()["cuda_dispatch"]:
        backends["cuda kernel, GPU"] = ("cuda", contextlib.nullcontext)
    return backends


def selfcheck(tolerance: float = 1e-4) -> bool:
    generator = torch.Generator().manual_seed(0)
    print(f"{'op':<12} {'backend':<24} {'max abs error':>14} {'time':>9}")
    ok = True
    for name, (op, ref, make_inputs) in CHECKS.items():
        inputs = make_inputs(generator)
        expected = ref(*(a.double() if isinstance(a, torch.Tensor) else a for a in inputs))
        for backend, (device, context) in _backends().items():
            args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in inputs]
            start = time.perf_counter()
            with context():
                out = op(*args)
            elapsed = time.perf_counter() - start
            error = (out.double().cpu() - expected).abs().max().item()
            ok &= error <= tolerance
            print(f"{name:<12} {backend:<24} {error:>14.3e} {elapsed * 1e3:>7.1f}ms")
    print("selfcheck:", "all ops match their references" if ok else f"FAILED (tolerance {tolerance})")
    return ok
