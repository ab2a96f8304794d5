"""Benchmark (CPU or GPU) of gradients of gradients through sliding-window attention: forward, backward, double
backward.

One step is what a meta-learning outer gradient does through an attention layer:
    out = attention(q, k, v);  dq, dk, dv = grad(out, (q, k, v), dout, create_graph=True)
    grad(<dq, gdq> + <dk, gdk> + <dv, gdv>, (q, k, v, dout))
run the same way (through autograd) for every implementation, float32 on the CPU (bfloat16 on a GPU), batch 1,
HEADS heads:
- ttt_kernels: the fused ops (swa_fwd, swa_bwd, swa_bwd_bwd), O(S * W) work and O(S * d) memory;
- sdpa_math: torch SDPA with an explicit [S, S] boolean mask on the MATH backend, the only SDPA backend with a double
  backward (dense S^2 work and memory);
- eager: ttt_kernels.reference.swa_attention (dense masked softmax in plain torch ops).

Each (implementation, S, W) runs in a fresh subprocess: peak memory is the process's peak resident set during one
step minus its resident set before it (Linux /proc: VmHWM after resetting it through clear_refs; on a GPU the peak
of torch's allocated device memory above what the inputs hold), then the median (min-max) time of the following
repeats (CUDA-event times on a GPU). GFLOP/s credit every implementation the same useful work, 32 * d * N for N unmasked
(query, key) pairs: 2 products in the forward, 4 in the backward, 10 in the double backward (without recomputation),
2 * d * N flops each. The GEMM rate of torch.mm on the device is printed for scale.

    python bench/bench_swa_bwd_bwd.py [--quick] [--device cuda] [--threads N] [--out results.json]
"""

import argparse
import json
import os
import subprocess
import sys

import harness
import torch

HEADS = 2
HEAD_DIM = 64
SEQLENS = (1024, 2048, 4096, 8192)
WINDOWS = (256, 1024)
QUICK = dict(seqlens=(1024, 2048), windows=(256,))
IMPLS = ("ttt_kernels", "sdpa_math", "eager")
# The dense peers past this length need several GiB per [S, S] tensor of every head.
MAX_DENSE_SEQLEN = 8192
# A step slower than this is timed once (after the measured one) instead of `repeats` times.
SLOW_CALL_S = 2.0


def _attention(impl: str, window: int):
    """attention(q, k, v) on [batch, seqlen, heads, head_dim] tensors."""
    if impl == "ttt_kernels":
        from ttt_kernels.ops import swa_attention

        return lambda q, k, v: swa_attention(q, k, v, window)
    if impl == "eager":
        from ttt_kernels.reference import swa_attention

        return lambda q, k, v: swa_attention(q, k, v, window)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa_math(q, k, v):
        t = torch.arange(q.shape[1], device=q.device)
        mask = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)
        with sdpa_kernel(SDPBackend.MATH):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            )
        return out.transpose(1, 2)

    return sdpa_math


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set


def run_one(impl: str, seqlen: int, window: int, repeats: int, device: torch.device) -> dict:
    """One configuration in this process: peak extra memory of one step, then its timing."""
    import ttt_kernels  # noqa: F401

    attention = _attention(impl, window)
    gen = torch.Generator().manual_seed(0)
    shape = (1, seqlen, HEADS, HEAD_DIM)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v, dout, gdq, gdk, gdv = (torch.randn(*shape, generator=gen).to(device, dtype) for _ in range(7))

    def step():
        x = tuple(t.detach().requires_grad_() for t in (q, k, v))
        d = dout.detach().requires_grad_()
        grads = torch.autograd.grad(attention(*x), x, d, create_graph=True)
        loss = sum((g * c).sum() for g, c in zip(grads, (gdq, gdk, gdv)))
        return torch.autograd.grad(loss, (*x, d))

    step()  # warm-up: allocator pools, thread pool, lazily loaded kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        timing = harness.time_fn(step, device, repeats, warmup=0, slow_call_s=SLOW_CALL_S)
        peak_kib = (torch.cuda.max_memory_allocated() - base) / 1024
    else:
        base = _rss_kib("VmRSS")
        _reset_peak_rss()
        first = harness.time_fn(step, device, 1, warmup=0)
        peak_kib = _rss_kib("VmHWM") - base
        rest = (
            []
            if first["median_s"] > SLOW_CALL_S
            else [harness.time_fn(step, device, 1, 0)["median_s"] for _ in range(repeats - 1)]
        )
        timing = harness.stats([first["median_s"], *rest])
    return {
        "ms": timing["median_s"] * 1e3,
        "ms_min_max": [timing["min_s"] * 1e3, timing["max_s"] * 1e3],
        "peak_mib": max(0, peak_kib) / 1024,
    }


def visible_pairs(seqlen: int, window: int) -> int:
    """Unmasked (query, key) entries of causal sliding-window attention over one head."""
    return int(torch.arange(1, seqlen + 1).clamp(max=window).sum())


def bench(seqlens, windows, repeats: int, threads: int, device: torch.device) -> list[dict]:
    results = []
    for seqlen in seqlens:
        for window in windows:
            n = HEADS * visible_pairs(seqlen, window)
            for impl in IMPLS:
                row = {"impl": impl, "seqlen": seqlen, "window": window, "head_dim": HEAD_DIM}
                results.append(row)
                if impl != "ttt_kernels" and seqlen > MAX_DENSE_SEQLEN:
                    row["skipped"] = f"dense {seqlen}^2 work and memory"
                    continue
                cmd = [sys.executable, __file__, "--one", impl, str(seqlen), str(window), "--repeats", str(repeats)]
                cmd += ["--threads", str(threads), "--device", str(device)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    last_line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
                    row["skipped"] = f"failed: {last_line}"
                    continue
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                row["gflops"] = 32 * HEAD_DIM * n / (row["ms"] / 1e3) / 1e9
                print(".", end="", flush=True)
    print()
    return results


def print_table(results: list[dict], gemm: float) -> None:
    print(f"{'S':>6} {'W':>5} {'impl':<12} {'ms':>9} {'GF/s':>6} {'peak MiB':>9} {'ttt speedup':>12} {'mem ratio':>10}")
    ours = {(r["seqlen"], r["window"]): r for r in results if r["impl"] == "ttt_kernels" and "ms" in r}
    for r in results:
        head = f"{r['seqlen']:>6} {r['window']:>5} {r['impl']:<12}"
        if "skipped" in r:
            print(f"{head} skipped: {r['skipped']}")
            continue
        base = ours.get((r["seqlen"], r["window"]))
        ratio = ""
        if base:
            ratio = f"{r['ms'] / base['ms']:>11.2f}x {r['peak_mib'] / max(base['peak_mib'], 1e-9):>9.1f}x"
        print(f"{head} {r['ms']:>9.1f} {r['gflops']:>6.1f} {r['peak_mib']:>9.1f} {ratio}")
    print(f"GF/s over 32*d*N useful flops (N unmasked pairs); torch.mm: {gemm:.1f} GF/s")
    print("speedup / mem ratio: the row's time / peak memory over ttt_kernels' (> 1: ttt_kernels is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S 1K and 2K, W 256, 2 repeats")
    harness.add_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "S", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or len(os.sched_getaffinity(0))
    device = harness.setup(args)
    if args.one:
        impl, seqlen, window = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(run_one(impl, seqlen, window, args.repeats, device)))
        return
    sizes, repeats = (QUICK, 2) if args.quick else (dict(seqlens=SEQLENS, windows=WINDOWS), args.repeats)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gemm = harness.gemm_gflops(device, dtype)
    results = bench(**sizes, repeats=repeats, threads=args.threads, device=device)
    harness.report(
        args.out,
        device,
        results,
        lambda rows: print_table(rows, gemm),
        f"{str(dtype).removeprefix('torch.')}, batch 1, {HEADS} heads, head_dim {HEAD_DIM}",
        repeats=repeats,
        heads=HEADS,
        gemm_gflops=gemm,
    )


if __name__ == "__main__":
    main()
