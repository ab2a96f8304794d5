"""Benchmark of the fused sliding-window attention against its strongest peers installed (CPU or GPU).

float32 on the CPU (bfloat16 on a GPU), batch 1, 8 heads. Times the forward and forward+backward (through autograd,
the same way for every implementation) and reports the median (min-max) over repeats and GFLOP/s over the unmasked
score entries N (batch * heads * number of visible (query, key) pairs): 4 * head_dim * N for the forward,
14 * head_dim * N for forward+backward (FlashAttention's count: the backward is 2.5 forwards). Every implementation
is credited the same useful work, so GFLOP/s compare like for like. The GEMM rate of torch.mm on the device is
printed for scale. On a GPU the times are CUDA-event times.

Peers (same run):
- sdpa_mask: torch.nn.functional.scaled_dot_product_attention with an explicit [S, S] boolean mask (dense S^2 work,
  skipped above MAX_SDPA_SEQLEN);
- flex: FlexAttention with a sliding-window block mask, compiled (torch.compile); on the CPU torch has no backward
  for it (forward only), and it is skipped above MAX_FLEX_GFLOP of forward work there;
- flash_attn (GPU, when the flash-attn package is installed): flash_attn_func(causal=True, window_size=(W-1, 0)),
  FlashAttention 2's sliding window; flash_attn_3 likewise when its interface module is installed.

    python bench/bench_swa.py [--quick] [--device cuda] [--threads N] [--out results.json]
"""

import importlib

import harness
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

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


def visible_pairs(seqlen: int, window: int) -> int:
    """Unmasked (query, key) entries of causal sliding-window attention over one head."""
    return int(torch.arange(1, seqlen + 1).clamp(max=window).sum())


def _flash_attention_peers() -> dict:
    """name -> flash_attn_func of the FlashAttention packages installed (none on most CPU machines)."""
    peers = {}
    for name, module in (("flash_attn", "flash_attn"), ("flash_attn_3", "flash_attn_interface")):
        try:
            peers[name] = importlib.import_module(module).flash_attn_func
        except ImportError:
            continue
    return peers


def implementations(seqlen: int, window: int, head_dim: int, device: torch.device):
    """name -> (forward fn(q, k, v) on [b, s, h, d] tensors or a skip reason, whether it has a backward here)."""
    gpu = device.type == "cuda"
    fwd_gflop = 4 * head_dim * HEADS * visible_pairs(seqlen, window) / 1e9
    impls = {"ttt_kernels": (lambda q, k, v: ops.swa_attention(q, k, v, window), True)}
    if seqlen <= MAX_SDPA_SEQLEN:
        t = torch.arange(seqlen, device=device)
        mask = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)
        impls["sdpa_mask"] = (
            lambda q, k, v: F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2),
            True,
        )
    else:
        impls["sdpa_mask"] = (f"skipped: dense {seqlen}^2 mask and work", True)
    if gpu or fwd_gflop <= MAX_FLEX_GFLOP:

        def sliding_window(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

        block_mask = _block_mask(sliding_window, None, None, seqlen, seqlen, device=str(device))
        impls["flex"] = (
            lambda q, k, v: _flex(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask
            ).transpose(1, 2),
            gpu,
        )
    else:
        impls["flex"] = (f"skipped: {fwd_gflop:.0f} GFLOP forward (> {MAX_FLEX_GFLOP:.0f})", False)
    if gpu:
        for name, flash in _flash_attention_peers().items():  # [b, s, h, d] in and out, like ttt_kernels
            impls[name] = (lambda q, k, v, flash=flash: flash(q, k, v, causal=True, window_size=(window - 1, 0)), True)
    return impls


def bench(seqlens, windows, head_dims, repeats: int, device: torch.device) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = []
    for head_dim in head_dims:
        for seqlen in seqlens:
            for window in sorted({min(w, seqlen) for w in windows}):  # window >= seqlen: plain causal attention
                gen = torch.Generator().manual_seed(0)
                q, k, v, dout = (
                    torch.randn(1, seqlen, HEADS, head_dim, generator=gen).to(device, dtype) for _ in range(4)
                )
                n = HEADS * visible_pairs(seqlen, window)
                for name, (fn, has_backward) in implementations(seqlen, window, head_dim, device).items():
                    row = {"impl": name, "seqlen": seqlen, "window": window, "head_dim": head_dim}
                    results.append(row)
                    if isinstance(fn, str):
                        row["skipped"] = fn
                        continue
                    # SDPA and flex take [b, h, s, d]; give them contiguous tensors in that layout.
                    if name in ("sdpa_mask", "flex"):
                        q_, k_, v_ = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
                    else:
                        q_, k_, v_ = q, k, v

                    def forward(fn=fn, q_=q_, k_=k_, v_=v_):
                        with torch.no_grad():
                            fn(q_, k_, v_)

                    fwd = harness.time_fn(forward, device, repeats, slow_call_s=SLOW_CALL_S)
                    row.update(
                        fwd_ms=fwd["median_s"] * 1e3,
                        fwd_ms_min_max=[fwd["min_s"] * 1e3, fwd["max_s"] * 1e3],
                        fwd_gflops=4 * head_dim * n / fwd["median_s"] / 1e9,
                    )
                    if not has_backward:
                        row["fwd_bwd_skipped"] = "no CPU backward"
                        continue
                    qg, kg, vg = (t.detach().requires_grad_() for t in (q_, k_, v_))

                    def forward_backward(fn=fn, qg=qg, kg=kg, vg=vg, dout=dout):
                        torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), dout)

                    train = harness.time_fn(forward_backward, device, repeats, slow_call_s=SLOW_CALL_S)
                    row.update(
                        fwd_bwd_ms=train["median_s"] * 1e3,
                        fwd_bwd_ms_min_max=[train["min_s"] * 1e3, train["max_s"] * 1e3],
                        fwd_bwd_gflops=14 * head_dim * n / train["median_s"] / 1e9,
                    )
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
    print(f"GF/s over unmasked entries (4*d*N forward, 14*d*N forward+backward); torch.mm: {gemm:.1f} GF/s")
    print("speedup: the row's time / ttt_kernels' time (> 1: ttt_kernels is faster)")


def main() -> None:
    args, device = harness.command_line(__doc__, "S 1K and 4K, W 256 and 1K, head_dim 128, 2 repeats")
    if args.quick:
        sizes, repeats = QUICK, 2
    else:
        sizes, repeats = dict(seqlens=SEQLENS, windows=WINDOWS, head_dims=HEAD_DIMS), 3
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gemm = harness.gemm_gflops(device, dtype)
    results = bench(**sizes, repeats=repeats, device=device)
    headline = f"{str(dtype).removeprefix('torch.')}, batch 1, {HEADS} heads"
    harness.report(
        args.out,
        device,
        results,
        lambda rows: print_table(rows, gemm),
        headline,
        repeats=repeats,
        heads=HEADS,
        dtype=str(dtype),
        gemm_gflops=gemm,
    )


if __name__ == "__main__":
    main()
