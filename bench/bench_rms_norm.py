"""Benchmark of the fused RMSNorm against the eager reference and torch.nn.functional.rms_norm (CPU or GPU).

Times the forward and forward+backward (through autograd, the same way for every implementation) and reports the
median (min-max) over repeats and the effective bandwidth: the bytes an ideal fused kernel must move (read x, weight,
grad_out, rstd; write out, rstd, grad_x, grad_weight) divided by the time. On a GPU the times are CUDA-event times.

    python bench/bench_rms_norm.py [--quick] [--device cuda] [--threads N] [--out results.json]
"""

import harness
import torch
import torch.nn.functional as F

from ttt_kernels import ops, reference

SHAPES = ((4096, 768), (16384, 1024), (1024, 2048))
QUICK_SHAPES = ((4096, 768), (1024, 2048))
EPS = 1e-6

IMPLEMENTATIONS = {
    "ttt_kernels": lambda x, w: ops.rms_norm(x, w, EPS),
    "reference": lambda x, w: reference.rms_norm(x, w, EPS),
    "F.rms_norm": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, EPS),
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


def bench(shapes, dtypes, repeats: int, device: torch.device) -> list[dict]:
    results = []
    for dtype in dtypes:
        for rows, d in shapes:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(rows, d, generator=gen).to(device, dtype)
            w = (1 + 0.1 * torch.randn(d, generator=gen)).to(device, dtype)
            g = torch.randn(rows, d, generator=gen).to(device, dtype)
            fwd_bytes, train_bytes = _ideal_bytes(rows, d, dtype)
            for name, fn in IMPLEMENTATIONS.items():
                fwd, train = _time_impl(fn, x, w, g, repeats)
                results.append(
                    {
                        "impl": name,
                        "dtype": str(dtype).removeprefix("torch."),
                        "rows": rows,
                        "dim": d,
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
    header = f"{'dtype':<9} {'shape':>12} {'impl':<12} {'fwd ms':>8} {'GB/s':>6} {'fwd+bwd ms':>11} {'GB/s':>6}"
    header += f" {'fwd speedup':>12} {'fwd+bwd speedup':>16}"
    print(header)
    base = {(r["dtype"], r["rows"], r["dim"]): r for r in results if r["impl"] == "ttt_kernels"}
    for r in results:
        ours = base[(r["dtype"], r["rows"], r["dim"])]
        shape = f"{r['rows']}x{r['dim']}"
        print(
            f"{r['dtype']:<9} {shape:>12} {r['impl']:<12} {r['fwd_ms']:>8.3f} {r['fwd_gbps']:>6.1f}"
            f" {r['fwd_bwd_ms']:>11.3f} {r['fwd_bwd_gbps']:>6.1f}"
            f" {r['fwd_ms'] / ours['fwd_ms']:>11.2f}x {r['fwd_bwd_ms'] / ours['fwd_bwd_ms']:>15.2f}x"
        )
    print("speedup: this row's time / ttt_kernels' time (> 1: ttt_kernels is faster)")


def main() -> None:
    args, device = harness.command_line(__doc__, "fewer shapes and repeats, float32 only")
    shapes, dtypes, repeats = (
        (QUICK_SHAPES, (torch.float32,), 5) if args.quick else (SHAPES, (torch.float32, torch.bfloat16), 20)
    )
    harness.report(args.out, device, bench(shapes, dtypes, repeats, device), print_table, repeats=repeats)


if __name__ == "__main__":
    main()
