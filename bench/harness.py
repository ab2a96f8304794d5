"""What every bench script shares: the --device/--threads/--out options, timing (CUDA events on a GPU, the wall clock
on the CPU; median, min and max), the GEMM rate of the machine for scale, and the description of the machine and
software written into each JSON result.

The scripts run from a checkout (``python bench/bench_<name>.py``), so this module is imported as ``harness``.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

import ttt_kernels
from ttt_kernels.cli import GLIBC_MALLOC
from ttt_kernels.cli.runtime import gpu_description


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's default)")
    parser.add_argument("--out", help="write the results as JSON to this path")


def command_line(doc: str, quick_help: str) -> tuple[argparse.Namespace, torch.device]:
    """The options of a script whose only own option is --quick (what it shortens: quick_help): (args, device)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    add_arguments(parser)
    args = parser.parse_args()
    return args, setup(args)


def report(out: str | None, device: torch.device, results: list, print_table, headline: str = "", **meta) -> None:
    """Prints the machine (and ``headline``) and print_table(results); writes the JSON when ``out`` is given."""
    env = environment(device)
    print(describe(env) + (f"; {headline}" if headline else ""))
    print_table(results)
    write_json(out, env, results, **meta)


def setup(args: argparse.Namespace) -> torch.device:
    """Applies --threads and checks --device; returns the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: no CUDA device is visible (torch {torch.__version__})")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SystemExit(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    return device


class Laps:
    """Marks between the phases of some work: ``mark()`` before, between and after them, then ``seconds()`` gives
    each phase's time: CUDA events on a GPU (device time, launches included), the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def proc_status_kib(field: str) -> int:
    """A KiB field of /proc/self/status: "VmRSS" (resident set now) or "VmHWM" (its peak: getrusage's ru_maxrss would
    include the parent's peak, which Linux carries over fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def stats(samples: list[float]) -> dict:
    """{"median_s", "min_s", "max_s", "repeats"} of timings in seconds."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": len(samples),
    }


def time_fn(fn, device: torch.device, repeats: int, warmup: int = 1, slow_call_s: float | None = None) -> dict:
    """Times ``fn()`` after ``warmup`` calls (stats()). A call slower than ``slow_call_s`` is timed once."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        laps = Laps(device)
        laps.mark()
        fn()
        laps.mark()
        times += laps.seconds()
        if slow_call_s is not None and times[0] > slow_call_s:
            break
    return stats(times)


def interleaved(variants: dict, repeats: int, warmup: int = 3) -> dict:
    """Runs ``variants`` (name -> fn() returning its phase times, a list of seconds) in turn, ``warmup`` + ``repeats``
    rounds, so that every variant sees the same machine load; returns name -> the measured rounds' phase times."""
    samples = {name: [] for name in variants}
    for i in range(warmup + repeats):
        for name, fn in variants.items():
            phases = fn()
            if i >= warmup:
                samples[name].append(phases)
    return samples


def gemm_gflops(device: torch.device, dtype: torch.dtype = torch.float32, shape=(4096, 4096, 4096), repeats=5) -> float:
    """The machine's GEMM rate at [m, k] x [k, n] = ``shape`` (m, k, n): torch.mm (MKL/OpenBLAS on the CPU, cuBLAS on
    a GPU), median GFLOP/s."""
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / time_fn(lambda: a @ b, device, repeats, warmup=3)["median_s"] / 1e9


def environment(device: torch.device) -> dict:
    """The machine and software a result was measured with."""
    build = ttt_kernels.build_info()
    env = {
        "ttt_kernels": ttt_kernels.__version__,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_isa": build["cpu_isa"],
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "malloc": {k: os.environ[k] for k in GLIBC_MALLOC if k in os.environ},
    }
    if device.type == "cuda":
        env.update(gpu_description(device), cuda_archs_built=build["cuda_archs"])
    return env


def describe(env: dict) -> str:
    """One line for the top of a table."""
    where = f"{env['gpu']} (CUDA {env['cuda']})" if "gpu" in env else f"CPU {env['cpu']}, {env['threads']} threads"
    load = f", load {env['load_average_1min']:.1f}" if env.get("load_average_1min") is not None else ""
    return f"ttt_kernels {env['ttt_kernels']}, torch {env['torch']}, {where}{load}"


def write_json(path: str | None, env: dict, results: list, **meta) -> None:
    """{"environment": env, "meta": meta, "results": results} to ``path`` (nothing without one)."""
    if path:
        with open(path, "w") as f:
            json.dump({"environment": env, "meta": meta, "results": results}, f, indent=2)
