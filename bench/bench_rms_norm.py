"""Benchmark of the fused RMSNorm against the eager reference and torch.nn.functional.rms_norm (CPU or GPU), plain
and as a QK-norm fused with RoPE (``rope=``; the peers then rotate the norm's pairs as complex numbers).

Times the forward and forward+backward (through autograd, the same way for every implementation) and reports the
median (min-max) over repeats and the effective bandwidth: the bytes an ideal fused kernel must move (read x, weight,
grad_out, rstd; write out, rstd, grad_x, grad_weight) divided by the time. On a GPU the times are CUDA-event times.

    python bench/bench_rms_norm.py [--quick] [--device cuda] [--threads N] [--out results.json]
"""

import math

import harness
import torch
import torch.nn.functional as F

from ttt_kernels import ops, reference

SHAPES = ((4096, 768), (16384, 1024), (1024, 2048))
QUICK_SHAPES = ((4096, 768), (1024, 2048))
# QK-norm + RoPE: q of one sequence, [positions, heads, head_dim].
ROPE_SHAPES = ((4096, 8, 64), (1024, 16, 128))
QUICK_ROPE_SHAPES = ((1024, 16, 128),)
EPS = 1e-6


def _rope_table(n: int, d: int, device: torch.device) -> torch.Tensor:
    """[n, d / 2, 2] (cos, sin) of position * 10000^(-2i/d), float32."""
    angles = torch.arange(n, device=device)[:, None] * 10000.0 ** (-torch.arange(0, d, 2, device=device) / d)
    return torch.stack((angles.cos(), angles.sin()), -1)


def _rotate(y: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """RoPE of y [n, heads, d] as eager PyTorch does it: pairs as complex numbers times cos + i sin, in float32."""
    pairs = torch.view_as_complex(y.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.view_as_complex(rope)[:, None]).flatten(-2).to(y.dtype)


def implementations(rope: torch.Tensor | None) -> dict:
    """name -> fn(x, w): the plain norms, or with rope the QK-norm + RoPE variants."""
    if rope is None:
        return {
            "ttt_kernels": lambda x, w: ops.rms_norm(x, w, EPS),
            "reference": lambda x, w: reference.rms_norm(x, w, EPS),
            "F.rms_norm": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, EPS),
        }
    return {
        "ttt_kernels": lambda x, w: ops.rms_norm(x, w, EPS, rope=rope),
        "reference": lambda x, w: reference.rms_norm(x, w, EPS, rope=rope),
        "F.rms_norm": lambda x, w: _rotate(F.rms_norm(x, (x.shape[-1],), w, EPS), rope),
    }


def _ideal_bytes(rows: int, d: int, dtype: torch.dtype) -> tuple[int, int]:
    """(forward, forward+backward) bytes moved by an ideal fused implementation."""
    elt = torch.empty((), dtype=dtype).element_size()
    rstd = rows * (8 if dtype == torch.float64 else 4)
    fwd = (2 * rows * d + d) * elt + rstd  # read x, weight; write out, rstd
    bwd = (3 * rows * d + 2 * d) * elt + rstd  # read grad_out, x, weight, rstd; write grad_x, grad_weight
    return fwd, fwd + bwd


def _time_impl(fn, x, w, g, repeats: int) -> tuple[dict, dict]:
    """Timings of fn's forward (no autograd) and of its forward + backward through autograd."""
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            fn(x, w)

    def forward_backward():
        torch.autograd.grad(fn(xg, wg), (xg, wg), g)

    return harness.time_fn(forward, x.device, repeats, 3), harness.time_fn(forward_backward, x.device, repeats, 3)


def bench(shapes, rope_shapes, dtypes, repeats: int, device: torch.device) -> list[dict]:
    """shapes: [rows, dim] of plain norms; rope_shapes: [positions, heads, dim] of QK-norms with RoPE."""
    cases = [((rows, d), None) for rows, d in shapes]
    cases += [((n, heads, d), _rope_table(n, d, device)) for n, heads, d in rope_shapes]
    results = []
    for dtype in dtypes:
        for shape, rope in cases:
            gen = torch.Generator().manual_seed(0)
            rows, d = math.prod(shape[:-1]), shape[-1]
            x = torch.randn(*shape, generator=gen).to(device, dtype)
            w = (1 + 0.1 * torch.randn(d, generator=gen)).to(device, dtype)
            g = torch.randn(*shape, generator=gen).to(device, dtype)
            fwd_bytes, train_bytes = _ideal_bytes(rows, d, dtype)
            if rope is not None:  # the table is read by the forward and by the backward
                fwd_bytes, train_bytes = fwd_bytes + rope.nbytes, train_bytes + 2 * rope.nbytes
            for name, fn in implementations(rope).items():
                fwd, train = _time_impl(fn, x, w, g, repeats)
                results.append(
                    {
                        "impl": name,
                        "dtype": str(dtype).removeprefix("torch."),
                        "rows": rows,
                        "dim": d,
                        "rope": rope is not None,
                        "fwd_ms": fwd["median_s"] * 1e3,
                        "fwd_ms_min_max": [fwd["min_s"] * 1e3, fwd["max_s"] * 1e3],
                        "fwd_bwd_ms": train["median_s"] * 1e3,
                        "fwd_bwd_ms_min_max": [train["min_s"] * 1e3, train["max_s"] * 1e3],
                        "fwd_gbps": fwd_bytes / fwd["median_s"] / 1e9,
                        "fwd_bwd_gbps": train_bytes / train["median_s"] / 1e9,
                    }
                )
    return results


def print_table(results: list[dict]) -> None:
    header = f"{'dtype':<9} {'shape':>17} {'impl':<12} {'fwd ms':>8} {'GB/s':>6} {'fwd+bwd ms':>11} {'GB/s':>6}"
    header += f" {'fwd speedup':>12} {'fwd+bwd speedup':>16}"
    print(header)
    key = ("dtype", "rows", "dim", "rope")
    base = {tuple(r[k] for k in key): r for r in results if r["impl"] == "ttt_kernels"}
    for r in results:
        ours = base[tuple(r[k] for k in key)]
        shape = f"{r['rows']}x{r['dim']}" + (" +RoPE" if r["rope"] else "")
        print(
            f"{r['dtype']:<9} {shape:>17} {r['impl']:<12} {r['fwd_ms']:>8.3f} {r['fwd_gbps']:>6.1f}"
            f" {r['fwd_bwd_ms']:>11.3f} {r['fwd_bwd_gbps']:>6.1f}"
            f" {r['fwd_ms'] / ours['fwd_ms']:>11.2f}x {r['fwd_bwd_ms'] / ours['fwd_bwd_ms']:>15.2f}x"
        )
    print("speedup: this row's time / ttt_kernels' time (> 1: ttt_kernels is faster)")


def main() -> None:
    args, device = harness.command_line(__doc__, "fewer shapes and repeats, float32 only")
    shapes, rope_shapes, dtypes, repeats = (
        (QUICK_SHAPES, QUICK_ROPE_SHAPES, (torch.float32,), 5)
        if args.quick
        else (SHAPES, ROPE_SHAPES, (torch.float32, torch.bfloat16), 20)
    )
    results = bench(shapes, rope_shapes, dtypes, repeats, device)
    harness.report(args.out, device, results, print_table, repeats=repeats)


if __name__ == "__main__":
    main()
