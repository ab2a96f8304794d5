"""Long context on the CPU: prefill and decode cost per token and peak memory of TTT-E2E, the sliding-window baseline
and full attention, from 8K to 2M tokens (docs/long_context.md).

For every preset, variant and context n, a fresh process builds the model (random weights, seed 0), reads n tokens
from a memory-mapped file of random bytes with ``model.prefill`` (the prompt a 1-D source read a slice at a time),
then decodes 4b tokens from that state (four TTT steps for TTT-E2E; again from copies of the state until 2 s have
been timed, the median pass counts), and reports prefill milliseconds per 1K tokens (of the whole prompt, and the
median over its 4K-token slices, which a burst of load on a shared machine does not move; prompts read in less than 5
s are read again until 5 s have been timed, and the median read counts), decode milliseconds per token and its peak
RSS (VmHWM, reset after a 4K-token warm-up). Variants: TTT-E2E (the preset), the sliding-window baseline
(``ttt=False``: the same blocks, the dynamic MLP frozen at W_0) and full attention (``ttt=False`` with a window as
long as the context). Full attention costs O(n) per token: it runs until a point would exceed the time budget
(``--budget-s``, predicted from the points measured), and the rest is extrapolated from a fit to the measured points
(prefill seconds = a n + c n^2, decode seconds per token = a + c n) and marked as such. At TTT-E2E's longest context
the prompt is read paired: after each 4K-token slice, one 4K-token slice continuing a state of 8K tokens (a copy, the
same tokens every time) is timed back to back with it, and the median ratio of the pairs by position bucket is the
cost of a position against the cost at 8K, whatever the machine's speed does during the long read (on a shared host
it drifts by tens of percent within a minute); decode passes after the prompt alternate with passes after the 8K
tokens the same way. Prints a table, writes JSON (``--out``) and a PNG (``--plot``, log-x). ``--device cuda``: a
bfloat16 model on the GPU, its peak allocated device memory instead of the RSS.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import harness
import numpy as np
import torch

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel
from ttt_kernels.model.model import PREFILL_SLICE_TOKENS

CONTEXTS = (8192, 32768, 131072, 524288, 1048576, 2097152)
MAX_CONTEXT = {"tiny": 2097152, "small": 524288}
VARIANTS = ("ttt-e2e", "swa", "full attention")
WARMUP_TOKENS = PREFILL_SLICE_TOKENS  # one slice
# TTT-E2E at the longest context: every slice of the prompt paired with a slice continuing a state of this many tokens.
REFERENCE_TOKENS = 8192
DEVICE = torch.device("cpu")  # --device
MIN_MEASURED_S = 5.0
MIN_DECODE_S = 2.0


def _config(preset: str, variant: str, context: int) -> TTTE2EConfig:
    if variant == "ttt-e2e":
        return TTTE2EConfig.preset(preset)
    if variant == "swa":
        return TTTE2EConfig.preset(preset, ttt=False)
    return TTTE2EConfig.preset(preset, ttt=False, window=context + 1)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _copy_state(state):
    """A state to continue from without changing ``state`` (whose tensors are replaced, never written, by
    prefill and decode: only its lists need copies)."""
    return dataclasses.replace(state, kv=list(state.kv), pending_kv=list(state.pending_kv))


def _paired_read(model, source, context: int, device: torch.device) -> tuple:
    """Reads source[:context] a 4K-token slice at a time; after each slice, times one slice continuing a copy of a
    REFERENCE_TOKENS-token state. Returns (the state after the prompt, the reference state, ms/1K of each slice, ms/1K
    of each reference slice, each slice's first position)."""
    size = PREFILL_SLICE_TOKENS
    reference = model.prefill(source[:REFERENCE_TOKENS])
    reference_slice = source[REFERENCE_TOKENS : REFERENCE_TOKENS + size]
    state, slice_ms, reference_ms = None, [], []
    for lo in range(0, context, size):
        hi = min(lo + size, context)
        t0 = _now(device)
        state = model.prefill(source[lo:hi], state)
        t1 = _now(device)
        model.prefill(reference_slice, _copy_state(reference))
        t2 = _now(device)
        slice_ms.append((t1 - t0) * 1e3 / ((hi - lo) / 1024))
        reference_ms.append((t2 - t1) * 1e3 / (size / 1024))
    return state, reference, slice_ms, reference_ms, list(range(0, context, size))


def _position_buckets(slice_ms: list, reference_ms: list, positions: list) -> dict:
    """Median slice / reference ratio per bucket of positions [8K, 16K), [16K, 32K), ... (x2 each)."""
    buckets, lo = {}, REFERENCE_TOKENS
    while lo < positions[-1] + 1:
        hi = 2 * lo
        ratios = [a / b for a, b, p in zip(slice_ms, reference_ms, positions) if lo <= p < hi]
        if ratios:
            buckets[f"{lo // 1024}K-{hi // 1024}K"] = float(np.median(ratios))
        lo = hi
    return buckets


def _child(
    preset: str,
    variant: str,
    context: int,
    data: str,
    device: torch.device,
    check: bool,
) -> None:
    """One measurement (in a fresh process): prints its JSON. On a GPU the model is bfloat16 and the peak is the
    device memory allocated (the process's RSS otherwise)."""
    torch.manual_seed(0)
    model = TTTE2EModel(_config(preset, variant, context)).eval().to(device)
    model = model.bfloat16() if device.type == "cuda" else model
    source = np.memmap(data, dtype=np.uint8, mode="r")
    decode_tokens = 4 * model.config.mini_batch_size
    model.prefill(source[:WARMUP_TOKENS])  # allocations of the slice and chunk code paths
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 1024
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = harness.proc_status_kib("VmRSS")
    if check:  # one paired read (the longest prompt)
        state, reference, slice_ms, reference_ms, positions = _paired_read(model, source, context, device)
        tokens = [min(PREFILL_SLICE_TOKENS, context - p) / 1024 for p in positions]
        runs = [sum(ms * k for ms, k in zip(slice_ms, tokens)) / 1e3]
        position = _position_buckets(slice_ms, reference_ms, positions)
    else:  # read again (fresh states) until MIN_MEASURED_S have been timed: the median of the repeats
        runs, slice_ms, position = [], [], None
        while not runs or sum(runs) < MIN_MEASURED_S:
            marks = [_now(device)]  # after each 4K-token slice
            state = model.prefill(source[:context], progress=lambda *_, m=marks: m.append(_now(device)))
            runs.append(marks[-1] - marks[0])
            slice_ms += list(
                np.diff(marks)
                * 1e3
                / (
                    np.diff(
                        [
                            0,
                            *range(PREFILL_SLICE_TOKENS, context, PREFILL_SLICE_TOKENS),
                            context,
                        ]
                    )
                    / 1024
                )
            )
    prefill_s = float(np.median(runs))
    following = torch.from_numpy(np.array(source[context : context + decode_tokens], dtype=np.int64)).to(device)

    def decode_pass(start_state) -> float:
        decoding = _copy_state(start_state)
        start = _now(device)
        for token in following:
            model.decode(decoding, token.view(1))
        return _now(device) - start

    # From copies of the state after the prompt, until MIN_DECODE_S have been timed: the median pass. With the paired
    # read, each pass is followed by one from the reference state: the median ratio is decode's cost against 8K.
    passes, ratios = [], []
    while not passes or sum(passes) < MIN_DECODE_S:
        passes.append(decode_pass(state))
        if check:
            ratios.append(passes[-1] / decode_pass(reference))
    decode_s = float(np.median(passes))
    if check:
        position["decode"] = float(np.median(ratios))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1024
    else:
        peak = harness.proc_status_kib("VmHWM")
    print(
        json.dumps(
            dict(
                prefill_s=prefill_s,
                reads=len(runs),
                slice_ms_per_1k_median=float(np.median(slice_ms)),
                decode_ms_per_token=decode_s * 1e3 / decode_tokens,
                peak_mib=peak / 1024,
                growth_mib=(peak - before) / 1024,
                cost_vs_8k_by_position=position,
            )
        )
    )


def _measure(preset: str, variant: str, context: int, data: str, check: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--threads",
        str(torch.get_num_threads()),
        "--device",
        str(DEVICE),
    ]
    command += ["--child", preset, variant, str(context), data, str(int(check))]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{preset} {variant} n={context} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit(xs, ys, powers) -> np.ndarray:
    """Least-squares coefficients of y = sum c_p x^p over ``powers`` (nonnegative: a cost)."""
    coef, *_ = np.linalg.lstsq(
        np.array([[x**p for p in powers] for x in xs], dtype=float),
        np.array(ys),
        rcond=None,
    )
    return np.maximum(coef, 0)


def _row(preset, variant, context, r, extrapolated=False) -> dict:
    return dict(
        preset=preset,
        variant=variant,
        context=context,
        prefill_ms_per_1k=r["prefill_s"] * 1e3 / (context / 1024),
        # the median over the prompt's 4K-token slices: robust to bursts of load on a shared machine
        slice_ms_per_1k_median=r.get("slice_ms_per_1k_median"),
        decode_ms_per_token=r["decode_ms_per_token"],
        peak_mib=r.get("peak_mib"),
        growth_mib=r.get("growth_mib"),
        extrapolated=extrapolated,
        cost_vs_8k_by_position=r.get("cost_vs_8k_by_position"),
    )


def bench(presets, variants, contexts, data: str, budget_s: float) -> list[dict]:
    rows = []
    for preset in presets:
        lengths = [n for n in contexts if n <= MAX_CONTEXT[preset]]
        for variant in variants:
            measured = []  # (n, prefill_s, decode_ms_per_token)
            for n in lengths:
                if variant == "full attention" and len(measured) >= 2:
                    a, c = _fit([m[0] for m in measured], [m[1] for m in measured], (1, 2))
                    if a * n + c * n * n > budget_s:
                        d0, d1 = _fit([m[0] for m in measured], [m[2] for m in measured], (0, 1))
                        r = dict(prefill_s=a * n + c * n * n, decode_ms_per_token=d0 + d1 * n)
                        rows.append(_row(preset, variant, n, r, extrapolated=True))
                        _print_point(rows[-1])
                        continue
                r = _measure(preset, variant, n, data, variant == "ttt-e2e" and n == lengths[-1])
                measured.append((n, r["prefill_s"], r["decode_ms_per_token"]))
                rows.append(_row(preset, variant, n, r))
                _print_point(rows[-1])
    return rows


def _print_point(r: dict) -> None:
    if r["extrapolated"]:
        mark = " (extrapolated)"
    else:
        mark = f" (slice median {r['slice_ms_per_1k_median']:.1f}), peak {r['peak_mib']:.0f} MiB"
        mark += f" (+{r['growth_mib']:.0f})"
    if r["cost_vs_8k_by_position"]:
        check = ", ".join(f"{k}: {v:.3f}" for k, v in r["cost_vs_8k_by_position"].items())
        mark += f"; cost / the cost at 8K, paired, by position: {check}"
    print(
        f"{r['preset']:<6} {r['variant']:<15} n={r['context']:<8} prefill {r['prefill_ms_per_1k']:9.1f} ms/1K, "
        f"decode {r['decode_ms_per_token']:8.2f} ms/token{mark}",
        flush=True,
    )


def _cell(r: dict | None, key: str, fmt: str, width: int = 16) -> str:
    """r[key] formatted, * when extrapolated, right-aligned in ``width`` columns ("-" without r)."""
    text = "-" if r is None else format(r[key], fmt) + ("*" if r["extrapolated"] else "")
    return f"{text:>{width}}"


def _print_table(rows: list) -> None:
    """Per preset and context: prefill ms/1K and decode ms/token of each variant, full attention / TTT-E2E, peaks."""
    for preset in dict.fromkeys(r["preset"] for r in rows):
        table = {}
        for r in rows:
            if r["preset"] == preset:
                table.setdefault(r["context"], {})[r["variant"]] = r
        print(
            f"\n{preset}: prefill ms per 1K tokens | TTT-E2E's median 4K slice | decode ms per token | peak RSS MiB"
            "   (* extrapolated)"
        )
        head = f"{'context':>9}" + "".join(f"{v:>16}" for v in VARIANTS) + f"{'full/ttt':>10}{'ttt slice':>10}"
        head += "".join(f"{v:>16}" for v in VARIANTS) + f"{'ttt peak':>10}{'swa peak':>10}"
        print(head)
        for n, v in table.items():
            ttt, full = v.get("ttt-e2e"), v.get("full attention")
            ratio = full["prefill_ms_per_1k"] / ttt["prefill_ms_per_1k"] if ttt and full else float("nan")
            line = f"{n:>9}" + "".join(_cell(v.get(x), "prefill_ms_per_1k", ".1f") for x in VARIANTS)
            line += f"{ratio:>10.2f}" + _cell(ttt, "slice_ms_per_1k_median", ".1f", 10)
            line += "".join(_cell(v.get(x), "decode_ms_per_token", ".2f") for x in VARIANTS)
            line += "".join(_cell(v.get(x), "peak_mib", ".0f", 10) for x in ("ttt-e2e", "swa"))
            print(line)
        for r in rows:
            if r["preset"] == preset and r["cost_vs_8k_by_position"]:
                print(
                    f"TTT-E2E at n={r['context']}: a 4K-token slice's prefill time / that of a slice at 8K timed "
                    "right after it, median by position; decode: a pass after the prompt / a pass after 8K tokens: "
                    + ", ".join(f"{k}: {v:.3f}" for k, v in r["cost_vs_8k_by_position"].items())
                )


def _plot(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(len(presets), 2, figsize=(11, 4 * len(presets)), squeeze=False)
    for (ax_prefill, ax_decode), preset in zip(axes, presets):
        for variant in VARIANTS:
            points = [r for r in rows if r["preset"] == preset and r["variant"] == variant]
            for ax, key in (
                (ax_prefill, "prefill_ms_per_1k"),
                (ax_decode, "decode_ms_per_token"),
            ):
                measured = [r for r in points if not r["extrapolated"]]
                (line,) = ax.plot(
                    [r["context"] for r in measured],
                    [r[key] for r in measured],
                    "o-",
                    label=variant,
                )
                rest = [r for r in points if r["extrapolated"]]
                if rest:
                    tail = measured[-1:] + rest
                    ax.plot(
                        [r["context"] for r in tail],
                        [r[key] for r in tail],
                        "o--",
                        color=line.get_color(),
                        mfc="none",
                        label=f"{variant} (extrapolated)",
                    )
        for ax, what in (
            (ax_prefill, "prefill, ms per 1K tokens"),
            (ax_decode, "decode, ms per token"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context (tokens)")
            ax.set_title(f"{preset}: {what}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="contexts up to 128K")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(MAX_CONTEXT))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--contexts",
        nargs="+",
        type=int,
        default=list(CONTEXTS),
        help="prompt lengths (tokens)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=120.0,
        help="longest full-attention prefill to run (s)",
    )
    parser.add_argument("--plot", help="write the PNG here")
    harness.add_arguments(parser)
    parser.add_argument(
        "--child",
        nargs=5,
        metavar=("PRESET", "VARIANT", "N", "DATA", "CHECK"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    global DEVICE
    device = DEVICE = harness.setup(args)
    if args.child:
        preset, variant, n, data, check = args.child
        _child(preset, variant, int(n), data, device, check == "1")
        return
    contexts = sorted(n for n in args.contexts if not args.quick or n <= 131072)
    if not contexts or contexts[0] < 1:
        raise SystemExit(f"--contexts: expected lengths >= 1 (<= 131072 with --quick), got {args.contexts}")
    env = harness.environment(device)
    print(harness.describe(env))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "tokens.bin")
        size = max(contexts) + 4096  # the prompts, then what is decoded after them
        np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tofile(data)
        rows = bench(args.presets, args.variants, contexts, data, args.budget_s)
    _print_table(rows)
    harness.write_json(args.out, env, rows, budget_s=args.budget_s, quick=args.quick)
    if args.plot:
        _plot(rows, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
