"""Benchmark (CPU or GPU) of the dynamic SwiGLU MLP of one TTT step: forward and backward (the step's clipped SGD
update: bench/bench_clip_sgd.py).

Compares ttt_kernels (swiglu_mlp through autograd) with eager PyTorch doing the same math (F.linear / silu / mul
through autograd), in one run with the two interleaved, at the 125m preset's shape (rows b = 1024, d = 768,
m = 1664) and the tiny preset's (b = 64, d = 128, m = 288). Reports median times per phase (min-max of the step),
the GFLOP/s of forward and backward (18 b d m flops: three GEMMs forward, six backward) and that rate as a fraction
of the machine's measured GEMM rate (torch.mm at the same shape). float32 on the CPU; on a GPU bfloat16 activations
and float32 fast weights (what the model runs), CUDA-event times.

    python bench/bench_swiglu.py [--quick] [--device cuda] [--threads N] [--out results.json]
"""

import harness
import torch
import torch.nn.functional as F

from ttt_kernels import ops

SHAPES = {"125m": (1024, 768, 1664), "tiny": (64, 128, 288)}
REPEATS = {"125m": 15, "tiny": 200}
QUICK_REPEATS = {"125m": 5, "tiny": 50}


def _ours(x, weights, dy):
    """Phase times (fwd, bwd) with ttt_kernels."""
    laps = harness.Laps(x.device)
    laps.mark()
    y = ops.swiglu_mlp(x, *weights)
    laps.mark()
    torch.autograd.grad(y, (x, *weights), dy)
    laps.mark()
    return laps.seconds()


def _eager(x, weights, dy):
    """Phase times (fwd, bwd) of the same math in eager PyTorch."""
    w1, w3, w2 = weights
    laps = harness.Laps(x.device)
    laps.mark()
    y = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    laps.mark()
    torch.autograd.grad(y, (x, *weights), dy)
    laps.mark()
    return laps.seconds()


def _inputs(rows, d, m, device):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=gen).to(device, dtype).requires_grad_()
    weights = [
        (0.02 * torch.randn(m, d, generator=gen)).to(device).requires_grad_(),
        (0.02 * torch.randn(m, d, generator=gen)).to(device).requires_grad_(),
        (0.02 * torch.randn(d, m, generator=gen)).to(device).requires_grad_(),
    ]
    return x, weights, torch.randn(rows, d, generator=gen).to(device, dtype)


def bench(shapes, repeats, device):
    results = []
    for name, (rows, d, m) in shapes.items():
        ours = _inputs(rows, d, m, device)
        x, weights, dy = _inputs(rows, d, m, device)
        # Eager torch needs one dtype: the weights in the activations' (bfloat16 on a GPU).
        eager = (x, [w.detach().to(x.dtype).requires_grad_() for w in weights], dy)
        samples = harness.interleaved(
            {"ttt_kernels": lambda ours=ours: _ours(*ours), "eager": lambda eager=eager: _eager(*eager)}, repeats[name]
        )
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        rate = harness.gemm_gflops(device, dtype, (rows, d, m), repeats[name])
        flops = 18 * rows * d * m
        for impl, phases in samples.items():
            step = harness.stats([sum(p) for p in phases])
            fwd, bwd = (harness.stats([p[k] for p in phases])["median_s"] for k in range(2))
            results.append(
                {
                    "shape": name,
                    "rows": rows,
                    "d": d,
                    "m": m,
                    "impl": impl,
                    "fwd_ms": fwd * 1e3,
                    "bwd_ms": bwd * 1e3,
                    "step_ms": step["median_s"] * 1e3,
                    "step_ms_min_max": [step["min_s"] * 1e3, step["max_s"] * 1e3],
                    "gflops": flops / step["median_s"] / 1e9,
                    "gemm_gflops": rate,
                }
            )
    return results


def print_table(results):
    print(
        f"{'shape':<6} {'impl':<12} {'fwd ms':>8} {'bwd ms':>8} {'step ms':>8} {'GFLOP/s':>8}"
        f" {'of mm':>6} {'speedup':>8}"
    )
    eager = {r["shape"]: r for r in results if r["impl"] == "eager"}
    for r in results:
        print(
            f"{r['shape']:<6} {r['impl']:<12} {r['fwd_ms']:>8.3f} {r['bwd_ms']:>8.3f} {r['step_ms']:>8.3f}"
            f" {r['gflops']:>8.1f} {r['gflops'] / r['gemm_gflops']:>6.0%}"
            f" {eager[r['shape']]['step_ms'] / r['step_ms']:>7.2f}x"
        )
    rates = ", ".join(f"{r['shape']} {r['gemm_gflops']:.1f}" for r in results if r["impl"] == "eager")
    print(
        f"step: fwd + bwd; of mm: step GFLOP/s / measured torch.mm GFLOP/s at the shape ({rates}); "
        "speedup: eager / this"
    )


def main():
    args, device = harness.command_line(__doc__, "fewer repeats")
    repeats = QUICK_REPEATS if args.quick else REPEATS
    harness.report(args.out, device, bench(SHAPES, repeats, device), print_table, repeats=repeats)


if __name__ == "__main__":
    main()
