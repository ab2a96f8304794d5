"""The subcommands of ``ttt-kernels``: each ``run_<name>(args)`` returns the exit status."""

import dataclasses
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

from ttt_kernels import distributed
from ttt_kernels.model import TTTE2EModel
from ttt_kernels.model.model import PREFILL_SLICE_TOKENS

from . import checkpoint, data, evaluate, runtime
from .errors import CLIError
from .progress import progress_bar
from .train import TRAIN_DEFAULTS, check_context, make_optimizer, resolve_config, train

_TRAIN_KEYS = tuple(TRAIN_DEFAULTS)


def _positive(value, name: str):
    if value is not None and value < 1:
        raise CLIError(f"{name} must be >= 1, got {value}")


def run_info(args) -> int:
    import ttt_kernels

    ttt_kernels.info()
    return 0


def run_selfcheck(args) -> int:
    from .selfcheck import selfcheck

    return 0 if selfcheck() else 1


def run_gpucheck(args) -> int:
    from . import gpucheck

    return gpucheck.run(args.out, args.minutes, args.bench_dir, args.tests_dir)


def run_bench(args) -> int:
    from . import bench

    _positive(args.threads, "--threads")
    return bench.run(args.only, args.bench_dir, args.threads)


def _one_process(command: str) -> None:
    """Only train runs on several processes: the others would each do the whole work and write the same files."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise CLIError(
            f"{command} runs in one process (WORLD_SIZE={os.environ['WORLD_SIZE']}): start it without torchrun; "
            "only train runs on several processes"
        )


def run_train(args) -> int:
    try:
        world = distributed.world_from_env()
    except ValueError as e:
        raise CLIError(f"the launcher's environment: {e}") from None
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise CLIError(f"--dist-timeout must be a finite number of seconds > 0, got {args.dist_timeout}")
    device = runtime.setup(args.device, args.threads, world)
    if world is None:
        return _train_command(args, device, None)
    distributed.init_process_group(device, args.dist_timeout)
    try:
        status = _train_command(args, device, world)
        torch.distributed.barrier()  # no rank tears the group down while another still uses it
        return status
    except RuntimeError as e:
        if not distributed.is_collective_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(
            f"rank {world.rank} of {world.size}: a collective operation failed, probably because another rank "
            f"stopped or hangs (see its output; --dist-timeout {args.dist_timeout:g} s): {first}"
        ) from None
    finally:
        torch.distributed.destroy_process_group()


def _train_command(args, device: torch.device, world) -> int:
    given = {k: getattr(args, k, None) for k in _TRAIN_KEYS}
    _positive(args.stop_after, "--stop-after")
    if args.minutes is not None and not args.minutes > 0:
        raise CLIError(f"--minutes must be > 0, got {args.minutes}")
    if args.save_every < 0:
        raise CLIError(f"--save-every must be >= 0 (0: at the end only), got {args.save_every}")
    if not (math.isfinite(args.save_minutes) and args.save_minutes >= 0):
        raise CLIError(f"--save-minutes must be a finite number >= 0 (0: never), got {args.save_minutes}")
    if args.resume is None and args.out is None:
        raise CLIError("--out: a checkpoint directory is required (or --resume CKPT)")
    result = train(
        given,
        out=args.out,
        device=device,
        resume=args.resume,
        save_every=args.save_every,
        save_seconds=60 * args.save_minutes,
        stop_after=args.stop_after,
        seconds=None if args.minutes is None else 60 * args.minutes,
        progress=args.progress,
        log_every=args.log_every,
        world=world,
        strategy=args.strategy,
    )
    if world is not None and not world.is_main:
        return 0
    out = args.out or args.resume
    last = result.history[-1]["loss"] if result.history else float("nan")
    val = f", validation loss {result.validation[-1]['loss']:.4f}" if result.validation else ""
    print(
        f"step {result.step}/{result.settings['steps']}: train loss {last:.4f}{val}; "
        f"{result.tokens_per_second:.0f} tokens/s on {f'{world.size} processes' if world else device}; "
        f"checkpoint {out}"
    )
    if result.stopped_early:
        print(f"stopped early ({result.stopped_early}); continue with: ttt-kernels train --resume {out}")
    return 0


def _load(ckpt: checkpoint.Checkpoint, device: torch.device, *, ttt: bool = True, tokens: int = 1) -> TTTE2EModel:
    config = ckpt.config if ttt else dataclasses.replace(ckpt.config, ttt=False)
    runtime.check_memory(config, device, tokens=tokens, training=False, what=f"checkpoint {ckpt.directory}")
    model = TTTE2EModel(config)
    ckpt.load_model(model)
    return model.to(device).eval()


def _final_inner_lr(ckpt: checkpoint.Checkpoint) -> float:
    return float(ckpt.trainer.get("settings", {}).get("inner_lr", 1.0))


def _run_name(path: str, all_paths: list) -> str:
    name = os.path.basename(os.path.normpath(path))
    same = [p for p in all_paths if os.path.basename(os.path.normpath(p)) == name]
    return os.path.normpath(path) if len(same) > 1 else name


def _report_runs(runs: list, context: int, window: int | None, plot: str | None, title: str) -> list:
    text, rows = evaluate.table(runs, context, window)
    print(text)
    if plot:
        from .plot import plot_loss_by_position

        plot_loss_by_position(runs, plot, window=window, title=title)
        print(f"plot: {plot}")
    return rows


def run_eval(args) -> int:
    _one_process("eval")
    device = runtime.setup(args.device, args.threads)
    _positive(args.windows, "--windows")
    _positive(args.batch, "--batch")
    _positive(args.context, "--context")
    if args.inner_lr is not None and not (math.isfinite(args.inner_lr) and args.inner_lr >= 0):
        raise CLIError(f"--inner-lr must be a finite number >= 0, got {args.inner_lr}")
    for path, option in ((args.json, "--json"), (args.plot, "--plot")):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise CLIError(f"{option}: the directory of {path} does not exist")
    ckpts = [checkpoint.Checkpoint(p) for p in args.checkpoints]
    first = ckpts[0].trainer.get("settings", {})
    if args.document is not None:
        document, context = _document(args.document, args.context, ckpts)
        windows = None
        print(f"evaluation: the first {context} tokens of {args.document} as one context on {device}")
    else:
        context = args.context or first.get("context")
        if not context:
            raise CLIError("--context is required (the checkpoint does not record its training context)")
        for c in ckpts:
            check_context(c.config, context, f" of {c.directory}")
        corpus_path = args.corpus if args.corpus is not None else first.get("corpus")
        corpus = data.load_corpus(corpus_path, args.corpus_suffix if args.corpus else first.get("corpus_suffix"))
        data.require_length(corpus, context)
        windows = data.evaluation_windows(corpus.validation, context, args.windows).to(device)
        print(f"corpus: {corpus.describe()}")
        print(f"evaluation: {len(windows)} held-out windows of {context} tokens on {device}")
    runs = []
    for c in ckpts:
        name = _run_name(c.directory, args.checkpoints)
        eta = args.inner_lr if args.inner_lr is not None else _final_inner_lr(c)
        settings = [(name, True)]
        if args.ttt_off and c.config.ttt:
            settings = [(f"{name} (TTT on)", True), (f"{name} (TTT off)", False)]
        for run_name, ttt in settings:
            # Activations of one prefill slice (of each window of a batch) at a time.
            model = _load(
                c, device, ttt=ttt, tokens=min(context, PREFILL_SLICE_TOKENS) * (1 if windows is None else args.batch)
            )
            if windows is None:
                runs += evaluate.evaluate_document(
                    [(run_name, model)], document, context, inner_lr=eta, progress=args.progress
                )
            else:
                runs += evaluate.evaluate(
                    [(run_name, model)], windows, inner_lr=eta, batch=args.batch, progress=args.progress
                )
            del model
    windows_k = [c.config.window for c in ckpts if c.config.window < context]
    window = min(windows_k) if windows_k else None
    read = f"{len(windows)} held-out windows" if windows is not None else os.path.basename(args.document)
    rows = _report_runs(runs, context, window, args.plot, f"loss by position ({read})")
    for r in runs:
        print(f"{r.name}: {r.tokens_per_second:.0f} tokens/s")
    if args.json:
        result = {
            "context": context,
            "window": window,
            "runs": [dataclasses.asdict(r) for r in runs],
            "table": [{"lo": lo, "hi": hi, "beyond_window": b, "losses": ls} for lo, hi, b, ls in rows],
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def _document(path: str, context: int | None, ckpts: list) -> tuple:
    """eval --document: the file mapped as a 1-D token source, and the context read from it (--context, or the
    file's length - 1, rounded down to a multiple of every checkpoint's mini-batch size)."""
    try:
        size = os.path.getsize(path)
        document = np.memmap(path, dtype=np.uint8, mode="r") if size else None
    except OSError as e:
        raise CLIError(f"--document: cannot read {path}: {e.strerror}") from None
    unit = evaluate.bucket_unit_of([c.config.mini_batch_size for c in ckpts])
    if context is None:
        context = (size - 1) // unit * unit
    if context < unit or context + 1 > size:
        raise CLIError(
            f"--document: {path} has {size} bytes; a context of {context} needs {context + 1}, and at least "
            f"{unit + 1} (one mini-batch of every checkpoint and its next token)"
        )
    for c in ckpts:
        check_context(c.config, context, f" of {c.directory}")
    return document, context


class _GenerateProgress:
    """tqdm bars (tokens, tokens/s) for generate's prefill and decode, on a terminal or with --progress."""

    def __init__(self, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars = {}

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase not in self.bars:
            self.close()  # the previous phase is over
            self.bars[phase] = progress_bar(total, phase, "tok", True)
        bar = self.bars[phase]
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_generate(args) -> int:
    _one_process("generate")
    device = runtime.setup(args.device, args.threads)
    _positive(args.max_new_tokens + 1, "--max-new-tokens + 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise CLIError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CLIError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.prompt_file is not None:
        # Mapped, not read: prefill takes the prompt a slice at a time, so a file of any size fits.
        try:
            prompt = np.memmap(args.prompt_file, dtype=np.uint8, mode="r") if os.path.getsize(args.prompt_file) else []
        except OSError as e:
            raise CLIError(f"--prompt-file: cannot read {args.prompt_file}: {e.strerror}") from None
        what = "--prompt-file"
    else:
        prompt = np.array(data.encode(args.prompt), dtype=np.uint8)
        what = "--prompt"
    if not len(prompt):
        raise CLIError(f"{what}: the prompt is empty (expected at least one byte)")
    ckpt = checkpoint.Checkpoint(args.checkpoint)
    model = _load(ckpt, device, ttt=not args.no_ttt, tokens=min(len(prompt), PREFILL_SLICE_TOKENS))
    eta = args.inner_lr if args.inner_lr is not None else _final_inner_lr(ckpt)
    bars = _GenerateProgress(args.progress)
    start = time.perf_counter()
    try:
        out = model.generate(
            prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.seed,
            inner_lr=eta,
            progress=bars.update,
            include_prompt=args.prompt_file is None,
        )
    finally:
        bars.close()
    seconds = time.perf_counter() - start
    sys.stdout.write(data.decode(out.tolist(), printable=sys.stdout.isatty()) + "\n")
    sys.stdout.flush()
    ttt = "off" if args.no_ttt or not ckpt.config.ttt else f"on (eta {eta:g})"
    print(
        f"[{len(prompt)} prompt + {args.max_new_tokens} new bytes in {seconds:.2f} s "
        f"({(len(prompt) + args.max_new_tokens) / seconds:.0f} tokens/s), TTT {ttt}, {device}]",
        file=sys.stderr,
    )
    return 0


# Seconds of the demo's budget kept for the sample at the end (prefill 256 + decode 128 tokens: about 1 s on 2 cores).
_SAMPLE_RESERVE_S = 10


def run_demo(args) -> int:
    _one_process("demo")
    wall_start = time.perf_counter()
    device = runtime.setup(args.device, args.threads)
    if not args.minutes > 0:
        raise CLIError(f"--minutes must be > 0, got {args.minutes}")
    _positive(args.windows, "--windows")
    _positive(args.batch, "--batch")
    budget = 60 * args.minutes
    config = resolve_config("tiny", None, args.set or [], "ttt", args.context)
    check_context(config, args.context)
    if config.window >= args.context:
        print(
            f"note: the context ({args.context}) does not exceed the window ({config.window}): no position is "
            "beyond the window"
        )
    runtime.check_memory(config, device, tokens=args.batch * args.context, training=True, what="the demo")
    if checkpoint.is_checkpoint(args.out) and checkpoint.Checkpoint(args.out).trainer.get("origin") != "demo":
        raise CLIError(f"--out: {args.out} holds a checkpoint that a demo did not write; choose another directory")
    print(
        f"TTT-E2E demo: tiny preset ({config.num_layers} blocks, d {config.hidden_size}, {config.num_suffix_layers} "
        f"with fast weights, window {config.window}, mini-batch {config.mini_batch_size}), context {args.context}, "
        f"batch {args.batch}, {device} ({torch.get_num_threads()} threads), budget {args.minutes:g} min"
    )
    corpus = data.load_corpus(args.corpus, args.corpus_suffix)
    data.require_length(corpus, args.context)
    print(f"corpus: {corpus.describe()}")

    # Calibrate the step time on a throw-away model (also warms up the kernels), then size the run to the budget:
    # the schedule (warm-up + cosine) needs the step count up front.
    torch.manual_seed(args.seed)
    probe = TTTE2EModel(config).to(device)
    opt = make_optimizer(probe, dict(TRAIN_DEFAULTS, lr=1e-3))
    sampler = data.WindowSampler(corpus.train, args.context, args.batch, args.seed + 1)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        loss, _ = probe.meta_loss(sampler.next_batch().to(device), 1.0, checkpoint=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    del probe, opt
    step_time = times[-1]
    # Evaluation (TTT on + off, no outer gradient) costs about 0.3 + 0.1 of a training step per batch of windows
    # (measured on 2 cores; more under load), the sample a few seconds: both are reserved from the training time
    # (training measures its step time as it goes, so the reserve follows the machine's load).
    eval_steps = 0.8 * len(range(0, args.windows, args.batch))
    train_seconds = budget - (time.perf_counter() - wall_start) - _SAMPLE_RESERVE_S
    steps = max(10, int(train_seconds / (1.1 * step_time) - eval_steps))
    print(f"calibration: {step_time:.2f} s per step -> {steps} training steps (~{steps * step_time:.0f} s)")

    given = dict(
        preset="tiny",
        set=args.set or [],
        corpus=args.corpus,
        corpus_suffix=args.corpus_suffix,
        steps=steps,
        batch=args.batch,
        context=args.context,
        seed=args.seed,
        checkpointing="none",  # fastest; a tiny model's activations at 4K tokens per step are ~0.3 GB
        val_every=0,  # the evaluation below is the validation
    )
    result = train(
        given,
        out=args.out,
        device=device,
        corpus=corpus,
        seconds=max(train_seconds, 1.0),
        reserve_steps=eval_steps,
        progress=args.progress,
        overwrite=True,  # a previous demo's checkpoint is replaced
        origin="demo",
        header=False,
    )
    print(
        f"trained {result.step} steps ({result.step * args.batch * args.context / 1e6:.2f}M tokens) in "
        f"{result.train_seconds:.0f} s: {result.tokens_per_second:.0f} tokens/s (meta-learning, second order); "
        f"final train loss {result.history[-1]['loss']:.4f}"
        + (f" (stopped early: {result.stopped_early})" if result.stopped_early else "")
    )

    windows = data.evaluation_windows(corpus.validation, args.context, args.windows).to(device)
    eta = result.settings["inner_lr"]
    trained = result.model.eval()
    off = TTTE2EModel(dataclasses.replace(config, ttt=False)).to(device).eval()
    off.load_state_dict(trained.state_dict())
    # Both settings read each batch of windows in turn, and stop at the budget (minus the sample's reserve) with the
    # same windows read: under load the evaluation shrinks instead of overrunning --minutes.
    runs = evaluate.evaluate(
        [("TTT on", trained), ("TTT off", off)],
        windows,
        inner_lr=eta,
        batch=args.batch,
        deadline=wall_start + budget - _SAMPLE_RESERVE_S,
        progress=args.progress,
    )
    print(f"\nloss by position on {runs[0].windows} held-out windows of {args.context} tokens (same weights):")
    plot = os.path.join(args.out, "loss_by_position.png")
    _report_runs(runs, args.context, config.window, plot, f"TTT-E2E tiny, {result.step} steps: TTT on vs off")

    if config.window < args.context:
        lo = -(-config.window // config.mini_batch_size) * config.mini_batch_size
        on, off_loss = runs[0].mean(lo, args.context), runs[1].mean(lo, args.context)
        verdict = "better" if on < off_loss else "NOT better"
        print(
            f"\nbeyond the window (positions {lo}-{args.context - 1}): TTT on {on:.4f} vs TTT off {off_loss:.4f} "
            f"nats/byte: TTT on is {verdict} ({on - off_loss:+.4f}, {100 * (on - off_loss) / off_loss:+.1f}%)"
        )
        print(
            "(same meta-learned weights; they were trained to be updated at test time, so TTT off is not a trained "
            "SWA baseline: train one with `ttt-kernels train --baseline swa` and compare with `ttt-kernels eval`)"
        )

    n_prompt, n_new = min(256, windows.shape[1]), 128
    generation = "skipped (time budget)"
    if wall_start + budget - time.perf_counter() > _SAMPLE_RESERVE_S / 2:
        t0 = time.perf_counter()
        sample = trained.generate(windows[0, :n_prompt], n_new, 0.8, 0.95, seed=args.seed, inner_lr=eta)
        generation = f"{(n_prompt + n_new) / (time.perf_counter() - t0):.0f} tokens/s"
        print(f"\nsample ({n_prompt} held-out bytes as prompt, {n_new} generated, temperature 0.8, top-p 0.95):")
        print("-" * 60)
        print(data.decode(sample[n_prompt:].tolist(), printable=True))
        print("-" * 60)
    print(
        f"throughput on {device} ({torch.get_num_threads()} threads, {platform.machine()}): meta-training "
        f"{result.tokens_per_second:.0f} tokens/s; evaluation TTT on {runs[0].tokens_per_second:.0f} tokens/s, "
        f"TTT off {runs[1].tokens_per_second:.0f} tokens/s; generation (prefill {n_prompt} + decode {n_new}) "
        f"{generation}"
    )
    if hasattr(os, "getloadavg"):
        print(
            f"machine load (1-minute average): {os.getloadavg()[0]:.1f} on {runtime.available_cores()} cores; "
            "other processes slow the demo down, and with several threads each waits for the slowest"
        )
    print(f"checkpoint: {args.out}; plot: {plot}; total {time.perf_counter() - wall_start:.0f} s")
    return 0
