"""Benchmark (CPU or GPU) of the TTT-E2E model: the step against the same model on the reference ops, meta-training
throughput, prefill latency against the sliding-window and full-attention baselines (same code path, TTT off /
window >= context), and peak memory of meta-training vs T.

- steps: one meta step (meta_loss forward + backward, second order, default checkpointing) and one forward with TTT
  (prefill: one first-order inner step per chunk) at tiny B=1, 2, 8 (T=1K) and small B=1 (T=4K), on the package's
  ops and on the reference ops (``ops="reference"``, same model and tokens), the variants interleaved repetition by
  repetition; tokens/s (all sequences), op calls per step (the ops reaching the dispatcher, OpCounter) and peak RSS
  of two steps above the process's RSS with the model built (one subprocess per point).

- meta-train: tokens/s of one meta_loss forward + backward (full second order, batch 1), for TTT-E2E (default
  checkpointing: per chunk, prefix blocks in recomputed slices), TTT-E2E with the prefix blocks run over the whole
  sequence in one pass (checkpoint_prefix=False: what prefix slicing costs) and, as the cost floor, the same network
  with TTT off (plain SWA training step).
- prefill: ms per 1K tokens of model.prefill over a context of 2K .. 32K (64K without --quick) tokens: TTT-E2E (one
  first-order inner step per mini-batch), SWA (TTT off) and full attention (TTT off, window = context).
- memory: peak RSS of a meta-training step above the process's baseline, one subprocess per (T, checkpoint mode):
  no checkpointing; per-chunk and two-level (groups of 4 chunks) checkpointing with the prefix blocks over the whole
  sequence; both with the prefix blocks in recomputed slices (the default). CPU only (peak RSS).

With --device cuda the models run on the GPU in bfloat16 (CUDA-event times), the steps report the peak of torch's
allocated device memory instead of RSS, and prefill also runs TTT-E2E with the chunk step as a CUDA graph
(``prefill(..., cuda_graph=True)``).

    python bench/bench_model.py [--quick] [--device cuda] [--presets tiny small] [--out bench/results/model.json]
"""

import argparse
import json
import subprocess
import sys
import time

import harness
import torch

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel
from ttt_kernels.op_counter import OpCounter

MEMORY_MODES = {
    "none": dict(checkpoint=False, checkpoint_prefix=False),
    "chunk": dict(checkpoint=True, checkpoint_prefix=False),
    "group4": dict(checkpoint=True, checkpoint_group=4, checkpoint_prefix=False),
    "chunk+slices": dict(checkpoint=True),
    "group4+slices": dict(checkpoint=True, checkpoint_group=4),
}

META_TRAIN_VARIANTS = (  # (name, config overrides, meta_loss arguments)
    ("ttt-e2e", {}, {}),
    ("ttt-e2e whole prefix", {}, dict(checkpoint_prefix=False)),
    ("swa (ttt off)", dict(ttt=False), {}),
)


DEVICE = torch.device("cpu")  # --device


def _model(preset: str, **overrides) -> TTTE2EModel:
    torch.manual_seed(0)
    model = TTTE2EModel(TTTE2EConfig.preset(preset, **overrides)).eval().to(DEVICE)
    return model.bfloat16() if DEVICE.type == "cuda" else model


def _tokens(length: int, vocab: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1)).to(DEVICE)


STEP_CONFIGS = (("tiny", 1, 1024), ("tiny", 2, 1024), ("tiny", 8, 1024), ("small", 1, 4096))  # preset, B, T
STEP_KINDS = ("meta step", "forward with TTT")


def _step(model: TTTE2EModel, kind: str, tokens: torch.Tensor):
    """One meta step (tokens [B, T+1]) or one forward with TTT (prefill of tokens[:, :T])."""
    if kind == "meta step":
        model.zero_grad(set_to_none=True)
        model.meta_loss(tokens)[0].backward()
    else:
        model.prefill(tokens[:, :-1])


def _step_child(preset: str, batch: int, t: int, ops: str, kind: str) -> None:
    """Prints the peak RSS (MiB, as JSON) of two steps above the RSS of the process with its model built: what
    training or inference adds, the one-time allocations of the code paths the step takes included (a warm-up on
    another problem size would leave out those of paths it does not take)."""
    model = _model(preset)
    model.ops = ops
    tokens = _tokens(t + 1, model.config.vocab_size, batch)
    base = harness.proc_status_kib("VmRSS")
    for _ in range(2):
        _step(model, kind, tokens)
    print(json.dumps(dict(peak_mib=(harness.proc_status_kib("VmHWM") - base) / 1024)))


def bench_steps(configs, repeats: int, measure_memory: bool = True) -> list[dict]:
    """Package ops vs reference ops per (config, step kind): median/min/max seconds over interleaved repetitions,
    tokens/s, op calls of one step, peak RSS."""
    rows = []
    for preset, batch, t in configs:
        models = {}
        for ops in ("package", "reference"):
            models[ops] = _model(preset)
            models[ops].ops = ops
        tokens = _tokens(t + 1, models["package"].config.vocab_size, batch)
        for kind in STEP_KINDS:
            times = {ops: [] for ops in models}
            counts = {}
            for ops, model in models.items():
                _step(model, kind, tokens)  # warm-up
                with OpCounter() as counter:
                    _step(model, kind, tokens)
                counts[ops] = counter.total
            for _ in range(repeats):
                for ops, model in models.items():
                    laps = harness.Laps(DEVICE)
                    laps.mark()
                    _step(model, kind, tokens)
                    laps.mark()
                    times[ops] += laps.seconds()
            for ops, model in models.items():
                peak = _peak_mib(preset, batch, t, ops, kind, model, tokens) if measure_memory else None
                med = harness.stats(times[ops])["median_s"]
                row = dict(preset=preset, batch=batch, tokens=t, kind=kind, ops=ops, seconds=med,
                           min_seconds=min(times[ops]), max_seconds=max(times[ops]), tokens_per_s=batch * t / med,
                           op_calls=counts[ops], peak_mib=peak)  # fmt: skip
                rows.append(row)
                print(
                    f"step        {preset:<6} B={batch:<2} T={t:<5} {kind:<17} {ops:<9} {med * 1e3:8.0f} ms "
                    f"[{min(times[ops]) * 1e3:.0f}, {max(times[ops]) * 1e3:.0f}] {batch * t / med:8.0f} tokens/s "
                    f"{counts[ops]:7d} op calls" + (f" {peak:6.0f} MiB" if peak is not None else ""),
                    flush=True,
                )
    return rows


def _peak_mib(preset, batch, t, ops, kind, model, tokens) -> float:
    """Peak memory of two steps: RSS above the built model's, in a fresh process (CPU), or torch's allocated device
    memory above what is allocated before them (GPU)."""
    if DEVICE.type != "cuda":
        return _child_json("--step-child", preset, batch, t, ops, kind)["peak_mib"]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        _step(model, kind, tokens)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    return harness.time_fn(fn, DEVICE, repeats, warmup)["median_s"]


def bench_meta_train(presets, lengths, repeats: int) -> list[dict]:
    rows = []
    for preset in presets:
        for t in lengths:
            for variant, overrides, kwargs in META_TRAIN_VARIANTS:
                model = _model(preset, **overrides)
                tokens = _tokens(t + 1, model.config.vocab_size)

                def step(model=model, tokens=tokens, kwargs=kwargs):
                    model.zero_grad(set_to_none=True)
                    model.meta_loss(tokens, **kwargs)[0].backward()

                seconds = _median_seconds(step, repeats)
                rows.append(dict(preset=preset, variant=variant, tokens=t, seconds=seconds, tokens_per_s=t / seconds))
                print(
                    f"meta-train  {preset:<6} {variant:<20} T={t:<6} {t / seconds:10.0f} tokens/s "
                    f"({seconds * 1e3:.0f} ms/step)",
                    flush=True,
                )
    return rows


def bench_prefill(presets, contexts, repeats: int) -> list[dict]:
    rows = []
    for preset in presets:
        for ctx in contexts:
            variants = [
                ("ttt-e2e", {}, {}),
                ("swa", dict(ttt=False), {}),
                ("full attention", dict(ttt=False, window=ctx), {}),
            ]
            if DEVICE.type == "cuda":
                variants.append(("ttt-e2e cuda graph", {}, dict(cuda_graph=True)))
            for variant, overrides, kwargs in variants:
                model = _model(preset, **overrides)
                tokens = _tokens(ctx, model.config.vocab_size)
                seconds = _median_seconds(
                    lambda m=model, t=tokens, kw=kwargs: m.prefill(t, **kw), repeats, warmup=0 if ctx >= 16384 else 1
                )
                ms_per_1k = seconds * 1e3 / (ctx / 1024)
                rows.append(dict(preset=preset, variant=variant, context=ctx, seconds=seconds, ms_per_1k=ms_per_1k))
                print(
                    f"prefill     {preset:<6} {variant:<14} ctx={ctx:<6} {ms_per_1k:9.1f} ms per 1K tokens", flush=True
                )
    return rows


def _memory_child(preset: str, t: int, mode: str) -> None:
    """Runs one meta-training step and prints its peak RSS above the baseline (MiB), as JSON."""
    model = _model(preset)
    tokens = _tokens(t + 1, model.config.vocab_size)
    model.meta_loss(tokens[:, : model.config.mini_batch_size + 1])[0].backward()  # warm up allocator and ops
    model.zero_grad(set_to_none=True)
    base = harness.proc_status_kib("VmHWM")
    start = time.perf_counter()
    model.meta_loss(tokens, **MEMORY_MODES[mode])[0].backward()
    seconds = time.perf_counter() - start
    print(json.dumps(dict(peak_mib=(harness.proc_status_kib("VmHWM") - base) / 1024, seconds=seconds)))


def _child_json(flag: str, *args) -> dict:
    """Runs this script with ``flag args`` (a measurement in a fresh process) and returns the JSON it prints last."""
    command = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), flag, *map(str, args)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(preset: str, lengths, modes) -> list[dict]:
    rows = []
    for t in lengths:
        for mode in modes:
            r = _child_json("--memory-child", preset, t, mode)
            rows.append(dict(preset=preset, tokens=t, mode=mode, **r))
            print(
                f"memory      {preset:<6} {mode:<14} T={t:<6} peak {r['peak_mib']:8.0f} MiB above baseline "
                f"({r['seconds']:.1f} s)",
                flush=True,
            )
    return rows


def _print_prefill_table(rows) -> None:
    """Prefill ms per 1K tokens: one line per (preset, context), one column per variant, and full / TTT-E2E."""
    table = {(r["preset"], r["context"]): {} for r in rows}
    for r in rows:
        table[(r["preset"], r["context"])][r["variant"]] = r["ms_per_1k"]
    print(f"\n{'preset':<7}{'context':>8}{'ttt-e2e':>10}{'swa':>10}{'full':>10}{'full/ttt':>10}   (ms per 1K tokens)")
    for (preset, ctx), v in table.items():
        print(
            f"{preset:<7}{ctx:>8}{v['ttt-e2e']:>10.1f}{v['swa']:>10.1f}{v['full attention']:>10.1f}"
            f"{v['full attention'] / v['ttt-e2e']:>10.2f}"
        )


def _print_step_table(rows) -> None:
    """Per (config, kind): package and reference ops side by side, and the ratio."""
    table = {}
    for r in rows:
        table.setdefault((r["preset"], r["batch"], r["tokens"], r["kind"]), {})[r["ops"]] = r
    print(
        f"\n{'preset':<7}{'B':>3}{'T':>6}  {'step':<17}{'package':>10}{'reference':>11}{'speed-up':>9}"
        f"{'op calls':>17}{'peak MiB':>16}   (tokens/s, all sequences)"
    )
    for (preset, batch, t, kind), v in table.items():
        p, ref = v["package"], v["reference"]
        peaks = "" if p["peak_mib"] is None else f"{p['peak_mib']:>8.0f}/{ref['peak_mib']:<7.0f}"
        print(
            f"{preset:<7}{batch:>3}{t:>6}  {kind:<17}{p['tokens_per_s']:>10.0f}{ref['tokens_per_s']:>11.0f}"
            f"{ref['seconds'] / p['seconds']:>8.2f}x{p['op_calls']:>8}/{ref['op_calls']:<8}{peaks}"
        )


def _print_meta_train_table(rows) -> None:
    """Meta-training tokens/s: one line per (preset, T), one column per variant."""
    table = {(r["preset"], r["tokens"]): {} for r in rows}
    for r in rows:
        table[(r["preset"], r["tokens"])][r["variant"]] = r["tokens_per_s"]
    names = [v for v, _, _ in META_TRAIN_VARIANTS]
    print(f"\n{'preset':<7}{'T':>7}" + "".join(f"{n:>22}" for n in names) + "   (meta-train tokens/s)")
    for (preset, t), v in table.items():
        print(f"{preset:<7}{t:>7}" + "".join(f"{v.get(n, float('nan')):>22.0f}" for n in names))


def _print_memory_table(rows) -> None:
    """Peak MiB above the baseline: one line per T, one column per checkpoint mode."""
    table = {r["tokens"]: {} for r in rows}
    for r in rows:
        table[r["tokens"]][r["mode"]] = r["peak_mib"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    print(f"\n{'T':>7}" + "".join(f"{m:>15}" for m in modes) + f"   (peak MiB, {rows[0]['preset']})")
    for t, v in table.items():
        print(f"{t:>7}" + "".join(f"{v.get(m, float('nan')):>15.0f}" for m in modes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, contexts up to 8K, memory up to 8K")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    harness.add_arguments(parser)
    parser.add_argument("--skip", nargs="*", default=[], choices=["steps", "meta-train", "prefill", "memory"])
    parser.add_argument("--memory-modes", nargs="+", default=list(MEMORY_MODES), choices=list(MEMORY_MODES))
    parser.add_argument("--memory-lengths", nargs="+", type=int, default=None, help="T values of the memory runs")
    parser.add_argument("--memory-child", nargs=3, metavar=("PRESET", "T", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--step-child", nargs=5, metavar=("PRESET", "B", "T", "OPS", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = harness.setup(args)
    if args.memory_child:
        preset, t, mode = args.memory_child
        _memory_child(preset, int(t), mode)
        return
    if args.step_child:
        preset, batch, t, ops, kind = args.step_child
        _step_child(preset, int(batch), int(t), ops, kind)
        return

    repeats = 1 if args.quick else 3
    contexts = (2048, 4096, 8192) if args.quick else (2048, 4096, 8192, 16384, 32768, 65536)
    mem_lengths = args.memory_lengths or ((1024, 4096, 8192) if args.quick else (1024, 4096, 8192, 16384, 32768))
    env = harness.environment(DEVICE)
    print(harness.describe(env))
    results = dict(environment=env, quick=args.quick)
    if "steps" not in args.skip:
        configs = [c for c in STEP_CONFIGS if c[0] in args.presets and not (args.quick and c[0] == "small")]
        results["steps"] = bench_steps(configs, 3 if args.quick else 7)
    if "meta-train" not in args.skip:
        results["meta_train"] = bench_meta_train(args.presets, (1024, 4096), repeats)
    if "prefill" not in args.skip:
        results["prefill"] = bench_prefill(args.presets, contexts, repeats)
    if "memory" not in args.skip and DEVICE.type == "cpu":  # peak RSS: a measure of the CPU
        results["memory"] = bench_memory(args.presets[0], mem_lengths, args.memory_modes)
    if "steps" in results:
        _print_step_table(results["steps"])
    if "meta_train" in results:
        _print_meta_train_table(results["meta_train"])
    if "memory" in results:
        _print_memory_table(results["memory"])
    if "prefill" in results:
        _print_prefill_table(results["prefill"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
