"""CPU benchmark of one TTT step of the dynamic SwiGLU MLP: forward, backward and the clipped SGD update.

Compares ttt_kernels (swiglu_mlp through autograd + clip_sgd_update_) with eager PyTorch doing the same math
(F.linear / silu / mul through autograd, then the global-norm clip and the update with torch's foreach ops), in one
run with the two interleaved, at the 125m preset's shape (rows b = 1024, d = 768, m = 1664) and the tiny preset's
(b = 64, d = 128, m = 288). Reports median times per phase, the step's GFLOP/s (18 b d m flops: three GEMMs forward,
six backward) and that rate as a fraction of the machine's measured float32 GEMM rate (torch.mm at the same shape).

    python bench/bench_mlp.py [--quick] [--threads N] [--out results.json]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import ttt_kernels
from ttt_kernels import ops

SHAPES = {"125m": (1024, 768, 1664), "tiny": (64, 128, 288)}
REPEATS = {"125m": 15, "tiny": 200}
QUICK_REPEATS = {"125m": 5, "tiny": 50}
LR, MAX_NORM = 1.0, 1.0


def _ours(x, weights, dy):
    """(fwd, bwd, update) seconds of one step with ttt_kernels."""
    t0 = time.perf_counter()
    y = ops.swiglu_mlp(x, *weights)
    t1 = time.perf_counter()
    _, *grads = torch.autograd.grad(y, (x, *weights), dy)
    t2 = time.perf_counter()
    ops.clip_sgd_update_(weights, grads, LR, MAX_NORM)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def _eager(x, weights, dy):
    """(fwd, bwd, update) seconds of the same step in eager PyTorch."""
    w1, w3, w2 = weights
    t0 = time.perf_counter()
    y = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    t1 = time.perf_counter()
    _, *grads = torch.autograd.grad(y, (x, *weights), dy)
    t2 = time.perf_counter()
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = torch.where(norm < MAX_NORM, torch.ones_like(norm), MAX_NORM / norm)
        torch._foreach_add_(weights, torch._foreach_mul(grads, -LR * scale))
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


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
            fwd, bwd, upd = (statistics.median(p[k] for p in samples) for k in range(3))
            results.append(
                {
                    "shape": name,
                    "rows": rows,
                    "d": d,
                    "m": m,
                    "impl": impl,
                    "fwd_ms": fwd * 1e3,
                    "bwd_ms": bwd * 1e3,
                    "update_ms": upd * 1e3,
                    "step_ms": step * 1e3,
                    "gflops": flops / step / 1e9,
                    "gemm_gflops": rate,
                }
            )
    return results


def print_table(results):
    print(
        f"{'shape':<6} {'impl':<12} {'fwd ms':>8} {'bwd ms':>8} {'update ms':>9} {'step ms':>8} {'GFLOP/s':>8}"
        f" {'of mm':>6} {'speedup':>8}"
    )
    eager = {r["shape"]: r for r in results if r["impl"] == "eager"}
    for r in results:
        print(
            f"{r['shape']:<6} {r['impl']:<12} {r['fwd_ms']:>8.3f} {r['bwd_ms']:>8.3f} {r['update_ms']:>9.3f}"
            f" {r['step_ms']:>8.3f} {r['gflops']:>8.1f} {r['gflops'] / r['gemm_gflops']:>6.0%}"
            f" {eager[r['shape']]['step_ms'] / r['step_ms']:>7.2f}x"
        )
    rates = ", ".join(f"{r['shape']} {r['gemm_gflops']:.1f}" for r in results if r["impl"] == "eager")
    print(f"of mm: step GFLOP/s / measured float32 torch.mm GFLOP/s at the shape ({rates}); speedup: eager / this")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's default)")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = QUICK_REPEATS if args.quick else REPEATS
    results = bench(SHAPES, repeats)
    print(f"ttt_kernels {ttt_kernels.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(results)
    if args.out:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
