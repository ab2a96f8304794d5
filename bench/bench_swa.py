"""CPU benchmark of the fused sliding-window attention against torch SDPA with a boolean mask and FlexAttention.

float32, batch 1, 8 heads. Times the forward and forward+backward (through autograd, the same way for every
implementation) and reports the median over repeats and GFLOP/s over the unmasked score entries N (batch * heads *
number of visible (query, key) pairs): 4 * head_dim * N for the forward, 14 * head_dim * N for forward+backward
(FlashAttention's count: the backward is 2.5 forwards). Every implementation is credited the same useful work, so
GFLOP/s compare like for like. The fp32 GEMM rate of torch.mm on this machine is printed for scale.

Peers (same run):
- sdpa_mask: torch.nn.functional.scaled_dot_product_attention with an explicit [S, S] boolean mask (dense S^2 work,
  skipped above MAX_SDPA_SEQLEN);
- flex: FlexAttention with a sliding-window block mask, compiled (torch.compile) on CPU; torch has no CPU backward
  for it, so forward only; skipped above MAX_FLEX_GFLOP of forward work.

    python bench/bench_swa.py [--quick] [--threads N] [--out results.json]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import ttt_kernels
from ttt_kernels import ops

HEADS = 8
SEQLENS = (1024, 4096, 16384, 32768)
WINDOWS = (256, 1024, 4096)
HEAD_DIMS = (64, 128)
QUICK = dict(seqlens=(1024, 4096), windows=(256, 1024), head_dims=(128,))
# Peers past these sizes would take minutes per call (or gigabytes of mask).
MAX_SDPA_SEQLEN = 4096
MAX_FLEX_GFLOP = 100.0
# One call slower than this is timed once (after the warm-up) instead of `repeats` times.
SLOW_CALL_S = 2.0

for option in ("recompile_limit", "cache_size_limit"):  # one compiled flex kernel per shape
    if hasattr(torch._dynamo.config, option):
        setattr(torch._dynamo.config, option, 64)
_flex = torch.compile(flex_attention)
_block_mask = torch.compile(create_block_mask)  # compiled: builds the mask without materializing S^2 entries


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > SLOW_CALL_S:
        return first
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_gflops(n: int = 4096) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _median_seconds(lambda: a @ b, 5) / 1e9


def visible_pairs(seqlen: int, window: int) -> int:
    """Unmasked (query, key) entries of causal sliding-window attention over one head."""
    return int(torch.arange(1, seqlen + 1).clamp(max=window).sum())


def implementations(seqlen: int, window: int, head_dim: int):
    """name -> (forward fn(q, k, v) on [b, s, h, d] tensors or a skip reason, whether it has a CPU backward)."""
    fwd_gflop = 4 * head_dim * HEADS * visible_pairs(seqlen, window) / 1e9
    impls = {"ttt_kernels": (lambda q, k, v: ops.swa_attention(q, k, v, window), True)}
    if seqlen <= MAX_SDPA_SEQLEN:
        t = torch.arange(seqlen)
        mask = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)
        impls["sdpa_mask"] = (
            lambda q, k, v: F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2),
            True,
        )
    else:
        impls["sdpa_mask"] = (f"skipped: dense {seqlen}^2 mask and work", True)
    if fwd_gflop <= MAX_FLEX_GFLOP:

        def sliding_window(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

        block_mask = _block_mask(sliding_window, None, None, seqlen, seqlen, device="cpu")
        impls["flex"] = (
            lambda q, k, v: _flex(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask
            ).transpose(1, 2),
            False,
        )
    else:
        impls["flex"] = (f"skipped: {fwd_gflop:.0f} GFLOP forward (> {MAX_FLEX_GFLOP:.0f})", False)
    return impls


def bench(seqlens, windows, head_dims, repeats: int) -> list[dict]:
    results = []
    for head_dim in head_dims:
        for seqlen in seqlens:
            for window in sorted({min(w, seqlen) for w in windows}):  # window >= seqlen: plain causal attention
                gen = torch.Generator().manual_seed(0)
                q, k, v, dout = (torch.randn(1, seqlen, HEADS, head_dim, generator=gen) for _ in range(4))
                n = HEADS * visible_pairs(seqlen, window)
                for name, (fn, has_backward) in implementations(seqlen, window, head_dim).items():
                    row = {"impl": name, "seqlen": seqlen, "window": window, "head_dim": head_dim}
                    results.append(row)
                    if isinstance(fn, str):
                        row["skipped"] = fn
                        continue
                    # Peers take [b, h, s, d]; give them contiguous tensors in that layout.
                    if name != "ttt_kernels":
                        q_, k_, v_ = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
                    else:
                        q_, k_, v_ = q, k, v

                    def forward(fn=fn, q_=q_, k_=k_, v_=v_):
                        with torch.no_grad():
                            fn(q_, k_, v_)

                    fwd_s = _median_seconds(forward, repeats)
                    row.update(fwd_ms=fwd_s * 1e3, fwd_gflops=4 * head_dim * n / fwd_s / 1e9)
                    if not has_backward:
                        row["fwd_bwd_skipped"] = "no CPU backward"
                        continue
                    qg, kg, vg = (t.detach().requires_grad_() for t in (q_, k_, v_))

                    def forward_backward(fn=fn, qg=qg, kg=kg, vg=vg, dout=dout):
                        torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), dout)

                    train_s = _median_seconds(forward_backward, repeats)
                    row.update(fwd_bwd_ms=train_s * 1e3, fwd_bwd_gflops=14 * head_dim * n / train_s / 1e9)
                    print(".", end="", flush=True)
    print()
    return results


def print_table(results: list[dict], gemm: float) -> None:
    print(
        f"{'S':>6} {'W':>5} {'d':>4} {'impl':<12} {'fwd ms':>9} {'GF/s':>6} {'fwd+bwd ms':>11} {'GF/s':>6}"
        f" {'ttt speedup fwd':>16} {'fwd+bwd':>8}"
    )
    ours = {(r["seqlen"], r["window"], r["head_dim"]): r for r in results if r["impl"] == "ttt_kernels"}
    for r in results:
        head = f"{r['seqlen']:>6} {r['window']:>5} {r['head_dim']:>4} {r['impl']:<12}"
        if "skipped" in r:
            print(f"{head} {r['skipped']}")
            continue
        base = ours[(r["seqlen"], r["window"], r["head_dim"])]
        fwd = f"{r['fwd_ms']:>9.1f} {r['fwd_gflops']:>6.1f}"
        speed = f"{r['fwd_ms'] / base['fwd_ms']:>15.2f}x"
        if "fwd_bwd_ms" in r:
            train = f"{r['fwd_bwd_ms']:>11.1f} {r['fwd_bwd_gflops']:>6.1f}"
            speed += f" {r['fwd_bwd_ms'] / base['fwd_bwd_ms']:>7.2f}x"
        else:
            train = f"{r['fwd_bwd_skipped']:>18}"
        print(f"{head} {fwd} {train} {speed}")
    print(f"GF/s over unmasked entries (4*d*N forward, 14*d*N forward+backward); torch.mm fp32: {gemm:.1f} GF/s")
    print("speedup: the row's time / ttt_kernels' time (> 1: ttt_kernels is faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S 1K and 4K, W 256 and 1K, head_dim 128, 2 repeats")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        sizes, repeats = QUICK, 2
    else:
        sizes, repeats = dict(seqlens=SEQLENS, windows=WINDOWS, head_dims=HEAD_DIMS), 3
    gemm = gemm_gflops()
    results = bench(**sizes, repeats=repeats)
    print(
        f"ttt_kernels {ttt_kernels.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads,"
        f" float32, batch 1, {HEADS} heads"
    )
    print_table(results, gemm)
    if args.out:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "heads": HEADS,
            "dtype": "float32",
            "gemm_gflops": gemm,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
