"""Benchmark of meta-training on 1 and 2 processes (ttt_kernels.distributed): tokens/s and memory per rank, one
process against DDP and FSDP2 ranks at the same global batch.

Each point is one torchrun launch (``--standalone``) of this script as a child: a meta step is meta_loss forward +
backward (second order, default checkpointing), the global-norm clip and an AdamW step, on random tokens, the global
batch split evenly among the ranks. A child times ``--steps`` steps after one warm-up step and reports, per rank: the
median step time, the peak RSS (VmHWM) above the RSS before the model was built, and the bytes of parameters,
gradients and AdamW moments the rank holds (the local shards under FSDP2). The launches are interleaved round by
round, so every variant sees the same machine load; a variant's time is the median over rounds of its median step.
Cores are shared: one process runs torch on all of them, each of N processes on 1/N of them.

On a GPU (--device cuda) each rank takes one device (nccl); points with more processes than devices are skipped.

    python bench/bench_distributed.py [--quick] [--rounds 3] [--presets tiny small] [--out bench/results/dist.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import harness
import torch

# preset -> (global batch, tokens per sequence)
SHAPES = {"tiny": (4, 1024), "small": (2, 2048)}
QUICK_SHAPE = (2, 512)
VARIANTS = ((1, "single"), (2, "ddp"), (2, "fsdp"))  # (processes, strategy)


def _child(preset: str, strategy: str, batch: int, length: int, steps: int, out: str, device_type: str) -> None:
    """One launch: runs on every rank, rank 0 writes the ranks' measurements to ``out``."""
    import time

    import torch.distributed as dist

    from ttt_kernels import distributed
    from ttt_kernels.cli.runtime import available_cores
    from ttt_kernels.model import TTTE2EConfig, TTTE2EModel

    world = distributed.world_from_env()
    nproc = world.size if world else 1
    device = torch.device(f"cuda:{world.local_rank if world else 0}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, available_cores() // (world.local_size if world else 1)))
    if world is not None:
        distributed.init_process_group(device, 600)
    rss_before = harness.proc_status_kib("VmRSS")
    torch.manual_seed(0)
    model = TTTE2EModel(TTTE2EConfig.preset(preset)).to(device)
    step_module = model if world is None else distributed.wrap(model, strategy, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (steps + 1, batch, length + 1), generator=generator)
    rows, _ = distributed.share(tokens.transpose(0, 1), world)
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = step_module(rows[:, i].to(device), 1.0)
        loss.backward()
        distributed.local_value(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # the gradients' memory stays counted
        if device.type == "cuda":
            torch.cuda.synchronize()
        if world is not None:
            dist.barrier()  # a step ends when every rank's does
        if i:  # the first step warms up (allocations, caches, lazy initialization)
            times.append(time.perf_counter() - start)

    def local_bytes(t) -> int:
        t = getattr(t, "_local_tensor", t)  # a DTensor's shard
        return t.numel() * t.element_size()

    held = sum(local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0) for p in model.parameters())
    held += sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    mine = {
        "step_s": harness.stats(times)["median_s"],
        "peak_mib": (harness.proc_status_kib("VmHWM") - rss_before) / 1024,
        "held_mib": held / 2**20,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        mine["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    ranks = [mine]
    if world is not None:
        ranks = [None] * nproc
        dist.all_gather_object(ranks, mine)
    if world is None or world.is_main:
        with open(out, "w") as f:
            json.dump(ranks, f)
    if world is not None:
        dist.barrier()
        dist.destroy_process_group()


def _launch(preset: str, nproc: int, strategy: str, batch: int, length: int, steps: int, device: str) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ranks.json")
        child = [os.path.abspath(__file__), "--device", device]
        child += ["--child", preset, strategy, str(batch), str(length), str(steps), out]
        if nproc == 1:
            command = [sys.executable, *child]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            command += child
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def bench(presets: list, rounds: int, steps: int, quick: bool, device: str) -> list:
    gpus = torch.cuda.device_count() if device == "cuda" else None
    variants = [(n, s) for n, s in VARIANTS if gpus is None or n <= gpus]
    for n, s in VARIANTS:
        if (n, s) not in variants:
            print(f"skipped: {n} processes ({s}) need {n} GPUs, {gpus} visible")
    samples = {(p, n, s): [] for p in presets for n, s in variants}
    for r in range(rounds):
        for preset in presets:
            batch, length = QUICK_SHAPE if quick else SHAPES[preset]
            for nproc, strategy in variants:
                ranks = _launch(preset, nproc, strategy, batch, length, steps, device)
                samples[(preset, nproc, strategy)].append(ranks)
                print(f"round {r + 1}/{rounds}: {preset} {nproc} x {strategy}: {ranks[0]['step_s']:.3f} s", flush=True)
    results = []
    for (preset, nproc, strategy), runs in samples.items():
        batch, length = QUICK_SHAPE if quick else SHAPES[preset]
        step = harness.stats([max(rank["step_s"] for rank in ranks) for ranks in runs])
        results.append(
            {
                "preset": preset,
                "processes": nproc,
                "strategy": strategy,
                "global_batch": batch,
                "tokens_per_sequence": length,
                "threads_per_process": runs[0][0]["threads"],
                "step": step,
                "tokens_per_s": batch * length / step["median_s"],
                "peak_mib_per_rank": max(max(rank["peak_mib"] for rank in ranks) for ranks in runs),
                "held_mib_per_rank": max(rank["held_mib"] for rank in runs[0]),
            }
        )
    return results


def _print_table(results: list) -> None:
    head = f"{'preset':<6} {'B x T':>10} {'processes':>9} {'strategy':<8} {'threads':>7}"
    head += f" {'step s (median [min, max])':>28} {'tokens/s':>9} {'peak MiB/rank':>13}"
    head += f" {'weights+grads+AdamW MiB/rank':>29}"
    print(head)
    print("-" * len(head))
    for r in results:
        s = r["step"]
        step = f"{s['median_s']:.3f} [{s['min_s']:.3f}, {s['max_s']:.3f}]"
        print(
            f"{r['preset']:<6} {r['global_batch']:>4} x {r['tokens_per_sequence']:<5}{r['processes']:>9} "
            f"{r['strategy']:<8} {r['threads_per_process']:>7} {step:>28} {r['tokens_per_s']:>9.0f} "
            f"{r['peak_mib_per_rank']:>13.0f} {r['held_mib_per_rank']:>29.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"tiny only, B x T = {QUICK_SHAPE}, 1 round, 2 steps")
    parser.add_argument("--presets", nargs="+", default=list(SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved launches per variant (default 3)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per launch, after one warm-up (default 3)")
    harness.add_arguments(parser)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device_type = torch.device(args.device).type
    if args.child:
        preset, strategy, batch, length, steps, out = args.child
        _child(preset, strategy, int(batch), int(length), int(steps), out, device_type)
        return
    device = harness.setup(args)
    presets, rounds, steps = (["tiny"], 1, 2) if args.quick else (args.presets, args.rounds, args.steps)
    results = bench(presets, rounds, steps, args.quick, device_type)
    harness.report(
        args.out,
        device,
        results,
        _print_table,
        "each launch a fresh torchrun; the processes share the machine's cores",
        rounds=rounds,
        steps=steps,
    )


if __name__ == "__main__":
    main()
