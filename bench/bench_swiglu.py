"""CPU benchmark of the dynamic SwiGLU MLP of one TTT step: forward and backward (the step's clipped SGD update:
bench/bench_clip_sgd.py).

Compares ttt_kernels (swiglu_mlp through autograd) with eager PyTorch doing the same math (F.linear / silu / mul
through autograd), in one run with the two interleaved, at the 125m preset's shape (rows b = 1024, d = 768,
m = 1664) and the tiny preset's (b = 64, d = 128, m = 288). Reports median times per phase, the GFLOP/s of forward
and backward (18 b d m flops: three GEMMs forward, six backward) and that rate as a fraction of the machine's
measured float32 GEMM rate (torch.mm at the same shape).

    python bench/bench_swiglu.py [--quick] [--threads N] [--out results.json]
"""

import statistics
import time

import common
import torch
import torch.nn.functional as F

from ttt_kernels import ops

SHAPES = {"125m": (1024, 768, 1664), "tiny": (64, 128, 288)}
REPEATS = {"125m": 15, "tiny": 200}
QUICK_REPEATS = {"125m": 5, "tiny": 50}


def _ours(x, weights, dy):
    """(fwd, bwd) seconds with ttt_kernels."""
    t0 = time.perf_counter()
    y = ops.swiglu_mlp(x, *weights)
    t1 = time.perf_counter()
    torch.autograd.grad(y, (x, *weights), dy)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _eager(x, weights, dy):
    """(fwd, bwd) seconds of the same math in eager PyTorch."""
    w1, w3, w2 = weights
    t0 = time.perf_counter()
    y = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    t1 = time.perf_counter()
    torch.autograd.grad(y, (x, *weights), dy)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _inputs(rows, d, m):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=gen).requires_grad_()
    weights = [
        (0.02 * torch.randn(m, d, generator=gen)).requires_grad_(),
        (0.02 * torch.randn(m, d, generator=gen)).requires_grad_(),
        (0.02 * torch.randn(d, m, generator=gen)).requires_grad_(),
    ]
    return x, weights, torch.randn(rows, d, generator=gen)


def gemm_rate(rows, d, m, repeats):
    """Median float32 GFLOP/s of torch.mm at the MLP's up-projection shape [rows, d] x [d, m]."""
    a, b = torch.randn(rows, d), torch.randn(d, m)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        torch.mm(a, b)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * rows * d * m / statistics.median(times) / 1e9


def bench(shapes, repeats):
    results = []
    for name, (rows, d, m) in shapes.items():
        impls = {"ttt_kernels": (_ours, _inputs(rows, d, m)), "eager": (_eager, _inputs(rows, d, m))}
        times = {impl: [] for impl in impls}
        for i in range(repeats[name] + 3):  # the implementations alternate: both see the same machine load
            for impl, (fn, args) in impls.items():
                phases = fn(*args)
                if i >= 3:
                    times[impl].append(phases)
        rate = gemm_rate(rows, d, m, repeats[name])
        flops = 18 * rows * d * m
        for impl, samples in times.items():
            step = statistics.median(sum(p) for p in samples)
            fwd, bwd = (statistics.median(p[k] for p in samples) for k in range(2))
            results.append(
                {
                    "shape": name,
                    "rows": rows,
                    "d": d,
                    "m": m,
                    "impl": impl,
                    "fwd_ms": fwd * 1e3,
                    "bwd_ms": bwd * 1e3,
                    "step_ms": step * 1e3,
                    "gflops": flops / step / 1e9,
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
        f"step: fwd + bwd; of mm: step GFLOP/s / measured float32 torch.mm GFLOP/s at the shape ({rates}); "
        "speedup: eager / this"
    )


def main():
    common.run(__doc__, lambda repeats: bench(SHAPES, repeats), print_table, REPEATS, QUICK_REPEATS)


if __name__ == "__main__":
    main()
