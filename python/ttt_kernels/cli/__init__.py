"""The ``ttt-kernels`` command (also ``python -m ttt_kernels``): train, evaluate and generate with TTT-E2E on a
byte-level corpus that ships with every Python (its standard library's source), plus benchmarks and build checks.

    ttt-kernels demo       # meta-train the tiny preset for ~5 minutes, loss by position with TTT on vs off
    ttt-kernels train --out run1 --steps 500
    torchrun --nproc-per-node 2 -m ttt_kernels train --out run2 --strategy fsdp
    ttt-kernels eval run1 run2 --plot loss.png
    ttt-kernels generate run1 --prompt "def main("
    ttt-kernels bench | info | selfcheck

See docs/cli.md.
"""

import argparse
import os
import sys

from .errors import CLIError

__all__ = ["CLIError", "main"]


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if a GPU is visible, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the cores this process may use)")


def _add_corpus(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--corpus", help=f"a text file or a directory of text files ({default_help})")
    p.add_argument(
        "--corpus-suffix",
        help="read only the files of a --corpus directory whose name ends with this (default: .py for the standard "
        "library, every file otherwise)",
    )


def _train_parser(sub) -> None:
    from .train import BASELINES, CHECKPOINTING
    from .train import TRAIN_DEFAULTS as D

    p = sub.add_parser(
        "train",
        help="meta-train a model (or a baseline) and write checkpoints",
        description="Meta-trains TTT-E2E (or a baseline) on a byte corpus; writes a checkpoint directory (--out).",
    )
    p.add_argument("--out", help="checkpoint directory to write (default with --resume: the resumed one)")
    p.add_argument("--resume", metavar="CKPT", help="continue the training run of this checkpoint exactly")
    g = p.add_argument_group("model")
    g.add_argument("--preset", help=f"config preset: tiny, small, 125m, 350m, 760m, 1b, 3b (default {D['preset']})")
    g.add_argument("--config", help='JSON file: a full TTTE2EConfig, or {"preset": NAME, FIELD: VALUE, ...}')
    g.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a config field (repeatable), e.g. window=128"
    )
    g.add_argument(
        "--baseline",
        choices=BASELINES,
        help="ttt: TTT-E2E (default); swa: TTT off (sliding-window Transformer); full: TTT off, window >= context",
    )
    g = p.add_argument_group("data")
    _add_corpus(g, "default: the Python standard library's .py files")
    g.add_argument("--context", type=int, help=f"tokens per training window (default {D['context']})")
    g.add_argument("--batch", type=int, help=f"windows per step (default {D['batch']})")
    g.add_argument("--seed", type=int, help=f"initialisation and window sampling seed (default {D['seed']})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help=f"total optimiser steps (default {D['steps']})")
    g.add_argument("--lr", type=float, help=f"peak AdamW learning rate (default {D['lr']})")
    g.add_argument("--min-lr-ratio", type=float, help=f"final lr / peak lr of the cosine (default {D['min_lr_ratio']})")
    g.add_argument("--warmup", type=int, help="linear lr warm-up steps (default: 10%% of --steps)")
    g.add_argument("--weight-decay", type=float, help=f"AdamW weight decay, not on norms (default {D['weight_decay']})")
    g.add_argument("--beta1", type=float, help=f"AdamW beta1 (default {D['beta1']})")
    g.add_argument("--beta2", type=float, help=f"AdamW beta2 (default {D['beta2']})")
    g.add_argument("--grad-clip", type=float, help=f"global gradient-norm clip (default {D['grad_clip']})")
    g.add_argument("--inner-lr", type=float, help=f"inner learning rate eta after warm-up (default {D['inner_lr']})")
    g.add_argument("--inner-lr-start", type=float, help=f"eta at step 0 (default {D['inner_lr_start']})")
    g.add_argument("--inner-warmup", type=int, help="steps of the linear eta warm-up (default: 25%% of --steps)")
    g.add_argument(
        "--checkpointing",
        choices=tuple(CHECKPOINTING),
        help="activation checkpointing of meta-training: auto (default: recompute only above a memory budget), none "
        "(fastest), chunk, group4 (least memory)",
    )
    g = p.add_argument_group("validation and checkpoints")
    g.add_argument("--val-every", type=int, help=f"validate every N steps, 0: never (default {D['val_every']})")
    g.add_argument("--val-windows", type=int, help=f"held-out windows per validation (default {D['val_windows']})")
    g.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (default: at the end)")
    g.add_argument(
        "--save-minutes",
        type=float,
        default=10.0,
        help="also checkpoint after a step that ends this long after the last save (default 10; 0: never)",
    )
    g.add_argument("--stop-after", type=int, help="stop (and checkpoint) after N steps of this run; --resume later")
    g.add_argument("--minutes", type=float, help="stop (and checkpoint) when this time budget would be exceeded")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")
    g.add_argument("--log-every", type=int, default=10, help="without the bar, print a line every N steps")
    _add_runtime(p)
    g = p.add_argument_group(
        "several processes", "under torchrun --nproc-per-node N (docs/distributed.md); --batch is the global batch"
    )
    g.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="ddp: a full replica per process (default); fsdp: parameters, gradients and AdamW state sharded (FSDP2)",
    )
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a rank waiting longer than this for the others (one died or hangs) fails (default 600)",
    )


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="loss by token position (table + PNG) for one or more checkpoints",
        description="Loss by token position on held-out text for checkpoints side by side.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    _add_corpus(p, "default: the first checkpoint's training corpus")
    p.add_argument(
        "--document",
        metavar="FILE",
        help="instead of windows of the corpus: one long context, the first --context + 1 bytes of this file "
        "(default: all of it), read a slice at a time in constant memory",
    )
    p.add_argument(
        "--context",
        type=int,
        help="tokens per window (default: the first checkpoint's training context; with --document, the file)",
    )
    p.add_argument("--windows", type=int, default=32, help="held-out windows to average over (default 32)")
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--ttt-off", action="store_true", help="also evaluate each TTT checkpoint with TTT off")
    p.add_argument("--inner-lr", type=float, help="test-time eta (default: each checkpoint's final training eta)")
    p.add_argument("--plot", help="write a PNG of loss by position here")
    p.add_argument("--json", help="write the per-chunk losses and the table as JSON here")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")
    _add_runtime(p)


def _generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a prompt with a checkpoint (TTT steps during prefill and decode)",
        description="Continues a prompt (bytes) with a checkpoint; prints prompt + continuation.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="def ", help="prompt text (default 'def ')")
    src.add_argument("--prompt-file", help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=int, default=256, help="bytes to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0: greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-ttt", action="store_true", help="same weights, test-time training off")
    p.add_argument("--inner-lr", type=float, help="test-time eta (default: the checkpoint's final training eta)")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="prefill and decode progress (default: on a terminal)"
    )
    _add_runtime(p)


def _demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="meta-train the tiny preset for a few minutes, then loss by position with TTT on vs off",
        description="Meta-trains the tiny preset on the Python standard library for a bounded time, then evaluates "
        "it on held-out files with test-time training on and off (same weights): table, PNG plot, throughput.",
    )
    p.add_argument("--minutes", type=float, default=5.0, help="total time budget in minutes (default 5)")
    p.add_argument("--out", default="ttt-demo", help="directory for the checkpoint and the plot (default ttt-demo)")
    p.add_argument("--context", type=int, default=1024, help="tokens per window (default 1024; window is 256)")
    p.add_argument("--batch", type=int, default=4, help="windows per training step (default 4)")
    p.add_argument("--windows", type=int, default=32, help="held-out evaluation windows (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a field of the tiny preset (repeatable)"
    )
    _add_corpus(p, "default: the Python standard library's .py files")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")
    _add_runtime(p)


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the quick versions of the bench/ scripts of the source tree",
        description="Runs bench/bench_<name>.py --quick for each script and prints their tables.",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="scripts to run, e.g. rms_norm swa (default: every op's, then model: ttt_kernels.registry.BENCH_SCRIPTS)",
    )
    p.add_argument("--bench-dir", help="the source tree's bench/ directory (default: ./bench or above the package)")
    p.add_argument("--threads", type=int, help="torch threads of the scripts (default: theirs)")


def _version() -> str:
    """The installed distribution's version, read without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ttt-kernels")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttt-kernels",
        description="TTT-E2E (End-to-End Test-Time Training) with the ttt_kernels ops: train, evaluate, generate.",
    )
    parser.add_argument("--version", action="version", version=f"ttt-kernels {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)
    _generate_parser(sub)
    _bench_parser(sub)
    sub.add_parser("info", help="print the build: version, torch, CPU ISA, CUDA kernels, simulator")
    sub.add_parser("selfcheck", help="run every op through every available backend against its reference")
    p = sub.add_parser(
        "gpucheck",
        help="on a GPU machine, the first thing to run: selfcheck, arch primitives, gpu tests, benches; one report",
        description="Runs, within --minutes, selfcheck on the GPU, the arch primitives on the device, the gpu-marked "
        "tests and every bench script (--quick --device cuda) from a source checkout, and writes DIR/gpucheck.json and "
        "DIR/gpucheck.md. Without a GPU it says so and lists what it skipped.",
    )
    p.add_argument("--out", default="gpucheck-report", help="report directory (default gpucheck-report)")
    p.add_argument("--minutes", type=float, default=8.0, help="time budget (default 8)")
    p.add_argument("--bench-dir", help="the source tree's bench/ directory (default: ./bench or above the package)")
    p.add_argument("--tests-dir", help="the source tree's tests/ directory (default: beside bench/)")
    return parser


# glibc's malloc keeps freed memory for reuse instead of returning it to the kernel: blocks up to 32 MiB come from
# the heap (not mmap), and the heap is trimmed only past 1 GiB free at its top (see tuned_environment).
GLIBC_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def tuned_environment(environ, glibc: bool) -> dict:
    """The variables the command line adds to ``environ`` (its process environment) before torch loads, ``glibc``:
    whether the C library is glibc. A variable the user set is kept, and so are the malloc settings when any is set.

    - ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP (libgomp) lets idle worker threads spin between parallel regions;
      on a machine shared with another busy process a spinning worker takes the core the other thread of a region is
      waiting for. Measured on 2 cores beside one busy loop (tiny preset, meta step, B=2, T=1K): 1.14 s with 2
      threads, 0.36 s with 1 thread, 0.44 s with 2 threads and PASSIVE (docs/cli.md).
    - GLIBC_MALLOC (glibc only): by default glibc returns the memory a step freed to the kernel (the top of the heap
      past a threshold, and every block over its mmap threshold), and the next step takes page faults to get it back:
      11.6K faults per tiny prefill (B=2, T=1K), 56K per small one. Keeping it took the tiny prefill from 0.087 s
      to 0.066 s and the small meta step from 4.02 s to 3.53 s at the same peak memory (docs/cli.md). Both
      thresholds are set: setting the trim threshold alone fixes glibc's mmap threshold at 128 KiB (2x slower).
    """
    add = {}
    if "OMP_WAIT_POLICY" not in environ:
        add["OMP_WAIT_POLICY"] = "PASSIVE"
    user_malloc = any(k in environ for k in GLIBC_MALLOC) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
    if glibc and not user_malloc:
        add.update(GLIBC_MALLOC)
    return add


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or not glibc
        return False


def restart_in_tuned_environment() -> None:
    """Restarts this process (``python -m ttt_kernels ...``) with tuned_environment()'s variables, if it adds any:
    libgomp and glibc's malloc read them once, at load, so they must be set before the process starts."""
    add = tuned_environment(os.environ, _glibc())
    if not add:
        return
    os.environ.update(add)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "ttt_kernels", *sys.argv[1:]])


def main(argv=None) -> int:
    """Runs the command line with ``argv`` (default: sys.argv[1:], after restart_in_tuned_environment()) and returns
    the exit status."""
    if argv is None:
        restart_in_tuned_environment()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed by argparse
        return int(e.code or 0)
    try:
        from . import commands

        return getattr(commands, "run_" + args.command)(args)
    except CLIError as e:
        print(f"ttt-kernels: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ttt-kernels: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("ttt-kernels: error: out of memory; use a smaller preset, --batch or --context", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (GPU), past the estimate
            message = f"out of GPU memory ({e}); use a smaller preset, --batch or --context"
            print(f"ttt-kernels: error: {message}", file=sys.stderr)
            return 2
        raise
