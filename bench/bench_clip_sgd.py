"""Benchmark (CPU or GPU) of the clipped SGD update of one TTT step: the global-norm clip and the fast weights' update.

Compares ttt_kernels (clip_sgd_update_, in place) with eager PyTorch doing the same math (torch's foreach norm, the
clip scale and a foreach update), in one run with the two interleaved, on the float32 weights and gradients of one
dynamic MLP (w1, w3 [m, d], w2 [d, m]) at the 125m preset's shape (d = 768, m = 1664) and the tiny preset's (d = 128,
m = 288). Reports median times and the effective memory bandwidth: 16 bytes per weight (the gradient read for the norm
and for the update, the weight read and written). On a GPU, CUDA-event times.

    python bench/bench_clip_sgd.py [--quick] [--device cuda] [--threads N] [--out results.json]
"""

import harness
import torch

from ttt_kernels import ops

SHAPES = {"125m": (768, 1664), "tiny": (128, 288)}
REPEATS = {"125m": 50, "tiny": 500}
QUICK_REPEATS = {"125m": 15, "tiny": 100}
LR, MAX_NORM = 1.0, 1.0
WARMUP = 3


def _timed(fn):
    """fn(weights, grads) -> a function of (weights, grads) returning [its seconds]."""

    def run(weights, grads):
        laps = harness.Laps(weights[0].device)
        laps.mark()
        fn(weights, grads)
        laps.mark()
        return laps.seconds()

    return run


@_timed
def _ours(weights, grads):
    ops.clip_sgd_update_(weights, grads, LR, MAX_NORM)


@_timed
def _eager(weights, grads):
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = torch.where(norm < MAX_NORM, torch.ones_like(norm), MAX_NORM / norm)
    torch._foreach_add_(weights, torch._foreach_mul(grads, -LR * scale))


def _inputs(d, m, device):
    gen = torch.Generator().manual_seed(0)
    shapes = [(m, d), (m, d), (d, m)]
    weights = [(0.02 * torch.randn(s, generator=gen)).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    return weights, grads


def bench(shapes, repeats, device):
    results = []
    for name, (d, m) in shapes.items():
        ours, eager = _inputs(d, m, device), _inputs(d, m, device)
        samples = harness.interleaved(
            {"ttt_kernels": lambda ours=ours: _ours(*ours), "eager": lambda eager=eager: _eager(*eager)},
            repeats[name],
            WARMUP,
        )
        weights = 3 * d * m
        for impl, times in samples.items():
            t = harness.stats([p[0] for p in times])
            results.append(
                {
                    "shape": name,
                    "d": d,
                    "m": m,
                    "impl": impl,
                    "update_ms": t["median_s"] * 1e3,
                    "update_ms_min_max": [t["min_s"] * 1e3, t["max_s"] * 1e3],
                    "gbytes_per_s": 16 * weights / t["median_s"] / 1e9,
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
    args, device = harness.command_line(__doc__, "fewer repeats")
    repeats = QUICK_REPEATS if args.quick else REPEATS
    harness.report(args.out, device, bench(SHAPES, repeats, device), print_table, repeats=repeats)


if __name__ == "__main__":
    main()
