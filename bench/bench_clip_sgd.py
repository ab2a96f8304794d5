"""CPU benchmark of the clipped SGD update of one TTT step: the global-norm clip and the update of the fast weights.

Compares ttt_kernels (clip_sgd_update_, in place) with eager PyTorch doing the same math (torch's foreach norm, the
clip scale and a foreach update), in one run with the two interleaved, on the float32 weights and gradients of one
dynamic MLP (w1, w3 [m, d], w2 [d, m]) at the 125m preset's shape (d = 768, m = 1664) and the tiny preset's (d = 128,
m = 288). Reports median times and the effective memory bandwidth: 16 bytes per weight (the gradient read for the norm
and for the update, the weight read and written).

    python bench/bench_clip_sgd.py [--quick] [--threads N] [--out results.json]
"""

import statistics
import time

import common
import torch

from ttt_kernels import ops

SHAPES = {"125m": (768, 1664), "tiny": (128, 288)}
REPEATS = {"125m": 50, "tiny": 500}
QUICK_REPEATS = {"125m": 15, "tiny": 100}
LR, MAX_NORM = 1.0, 1.0
WARMUP = 3


def _ours(weights, grads):
    ops.clip_sgd_update_(weights, grads, LR, MAX_NORM)


def _eager(weights, grads):
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = torch.where(norm < MAX_NORM, torch.ones_like(norm), MAX_NORM / norm)
    torch._foreach_add_(weights, torch._foreach_mul(grads, -LR * scale))


def _inputs(d, m):
    gen = torch.Generator().manual_seed(0)
    shapes = [(m, d), (m, d), (d, m)]
    weights = [0.02 * torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    return weights, grads


def bench(shapes, repeats):
    results = []
    for name, (d, m) in shapes.items():
        impls = {"ttt_kernels": (_ours, _inputs(d, m)), "eager": (_eager, _inputs(d, m))}
        times = {impl: [] for impl in impls}
        for i in range(repeats[name] + WARMUP):  # the implementations alternate: both see the same machine load
            for impl, (fn, args) in impls.items():
                start = time.perf_counter()
                fn(*args)
                if i >= WARMUP:
                    times[impl].append(time.perf_counter() - start)
        weights = 3 * d * m
        for impl, samples in times.items():
            seconds = statistics.median(samples)
            results.append(
                {
                    "shape": name,
                    "d": d,
                    "m": m,
                    "impl": impl,
                    "update_ms": seconds * 1e3,
                    "gbytes_per_s": 16 * weights / seconds / 1e9,
                }
            )
    return results


def print_table(results):
    print(f"{'shape':<6} {'impl':<12} {'update ms':>9} {'GB/s':>7} {'speedup':>8}")
    eager = {r["shape"]: r for r in results if r["impl"] == "eager"}
    for r in results:
        speedup = eager[r["shape"]]["update_ms"] / r["update_ms"]
        print(f"{r['shape']:<6} {r['impl']:<12} {r['update_ms']:>9.3f} {r['gbytes_per_s']:>7.1f} {speedup:>7.2f}x")
    print("GB/s: 16 bytes per float32 weight (gradient read twice, weight read and written); speedup: eager / this")


def main():
    common.run(__doc__, lambda repeats: bench(SHAPES, repeats), print_table, REPEATS, QUICK_REPEATS)


if __name__ == "__main__":
    main()
