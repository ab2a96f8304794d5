"""``ttt-kernels gpucheck``: the first thing to run on a machine with a GPU. In one command, within a time budget
(default 8 minutes), from a source checkout:

1. the machine: GPU, clocks, driver, torch/CUDA versions, what the package was built with;
2. selfcheck on the GPU backend (every op of the registry, forward and gradients, against its reference);
3. the arch primitives (mma, ldmatrix, cp.async) on the device: tests/test_arch.py's gpu-marked tests;
4. every other gpu-marked test (the CUDA kernels against their references, the model on CUDA, CUDA graphs);
5. every bench script in quick mode with --device cuda (JSON per script).

It writes ``DIR/gpucheck.json`` and ``DIR/gpucheck.md`` (default DIR: gpucheck-report). On a machine without a GPU
(or a build without the CUDA dispatch) it says so and lists what it skipped.
"""

import datetime
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import torch

import ttt_kernels
from ttt_kernels.registry import BENCH_SCRIPTS

from . import bench
from .errors import CLIError
from .runtime import gpu_description

# Shares of the time budget: the tests, then the benches (each bench script gets an equal part of its share).
TEST_SHARE = 0.45


def _find_tests_dir(explicit: str | None, bench_dir: str) -> str:
    """The source tree's tests/ directory: --tests-dir, else the one beside ``bench_dir``."""
    if explicit is not None:
        if not os.path.isfile(os.path.join(explicit, "conftest.py")):
            raise CLIError(f"--tests-dir: {explicit} is not the source tree's tests/ directory (no conftest.py)")
        return explicit
    return os.path.join(os.path.dirname(os.path.abspath(bench_dir)), "tests")


def _count_gpu_tests(tests_dir: str) -> int | str:
    """How many tests are gpu-marked (pytest --collect-only), or why that is unknown."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu", tests_dir]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"(uncounted: {e})"
    return sum(1 for line in out.splitlines() if "::" in line)


def machine() -> dict:
    build = ttt_kernels.build_info()
    info = {
        "ttt_kernels": ttt_kernels.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels_built": build["cuda_kernels"],
        "cuda_archs_built": build["cuda_archs"],
        "cuda_dispatch": build["cuda_dispatch"],
        "gpu_visible": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info.update(gpu_description(torch.device("cuda", 0)))
    return info


def _pytest(tests_dir: str, paths: list, out_dir: str, name: str, timeout: float) -> dict:
    """Runs the gpu-marked tests of ``paths`` (relative to tests_dir) with a JUnit report; passed/failed/skipped."""
    xml = os.path.join(out_dir, f"{name}.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", f"--junitxml={xml}"]
    command += [os.path.join(tests_dir, p) for p in paths]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 10))
        output, status = proc.stdout + proc.stderr, "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as e:
        output, status = str(e.stdout or ""), f"timed out after {timeout:.0f} s"
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    if os.path.exists(xml):
        for case in ET.parse(xml).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            if kinds & {"failure", "error"}:
                counts["failed"] += 1
                failures.append(f"{case.get('classname')}::{case.get('name')}")
            elif "skipped" in kinds:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    if status == "passed" and counts["passed"] == 0:
        status = "nothing ran"
    tail = "\n".join(output.strip().splitlines()[-15:])
    return dict(status=status, seconds=time.perf_counter() - start, **counts, failures=failures, output_tail=tail)


def _bench(bench_dir: str, name: str, out_dir: str, timeout: float) -> dict:
    out = os.path.join(out_dir, f"bench_{name}.json")
    command = [sys.executable, os.path.join(bench_dir, f"bench_{name}.py"), "--quick", "--device", "cuda", "--out", out]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 10))
        status, text = ("passed" if proc.returncode == 0 else "failed"), proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        status, text = f"timed out after {timeout:.0f} s", str(e.stdout or "")
    return dict(status=status, seconds=time.perf_counter() - start, json=out if os.path.exists(out) else None,
                table="\n".join(text.strip().splitlines()[-40:]))  # fmt: skip


def _selfcheck_gpu() -> dict:
    from ttt_kernels.registry import OPS

    from .selfcheck import check

    rows = [check(op, "cuda kernel, GPU") for op in OPS]
    return dict(
        status="passed" if all(r.ok for r in rows) else "failed",
        rows=[
            dict(op=r.op, dtype=str(r.dtype), output_error=r.output_error, gradient_error=r.gradient_error, ok=r.ok)
            for r in rows
        ],  # fmt: skip
    )


def gpucheck(out_dir: str, minutes: float, bench_dir: str | None, tests_dir: str | None) -> dict:
    deadline = time.perf_counter() + 60 * minutes
    os.makedirs(out_dir, exist_ok=True)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "phases": {}}
    bench_dir = bench.find_bench_dir(bench_dir)
    tests_dir = _find_tests_dir(tests_dir, bench_dir)
    phases = report["phases"]
    m = report["machine"]
    if not (m["gpu_visible"] and m["cuda_dispatch"]):
        why = "no CUDA device is visible" if not m["gpu_visible"] else "the package was built without the CUDA dispatch"
        report["status"] = f"nothing checked: {why}"
        report["skipped"] = [
            "selfcheck on the GPU backend",
            "arch primitives on the device (tests/test_arch.py -m gpu)",
            f"{_count_gpu_tests(tests_dir)} gpu-marked tests (pytest -m gpu)",
            *(f"bench_{name}.py --quick --device cuda" for name in BENCH_SCRIPTS),
        ]
        return report
    bench_budget = (1 - TEST_SHARE) * 60 * minutes  # kept for the benches
    print("gpucheck: selfcheck on the GPU", flush=True)
    phases["selfcheck"] = _selfcheck_gpu()
    print("gpucheck: arch primitives on the device", flush=True)
    arch_budget = (deadline - time.perf_counter() - bench_budget) / 4
    phases["arch"] = _pytest(tests_dir, ["test_arch.py"], out_dir, "arch", arch_budget)
    print("gpucheck: gpu-marked tests", flush=True)
    others = sorted(p for p in os.listdir(tests_dir) if p.startswith("test_") and p.endswith(".py"))
    others.remove("test_arch.py")
    phases["gpu_tests"] = _pytest(
        tests_dir, others, out_dir, "gpu-tests", deadline - time.perf_counter() - bench_budget
    )
    for i, name in enumerate(BENCH_SCRIPTS):
        share = (deadline - time.perf_counter()) / (len(BENCH_SCRIPTS) - i)
        print(f"gpucheck: bench_{name}.py --quick --device cuda ({share:.0f} s at most)", flush=True)
        phases[f"bench_{name}"] = _bench(bench_dir, name, out_dir, share)
    failed = [name for name, p in phases.items() if p["status"] != "passed"]
    report["status"] = "all passed" if not failed else f"not passed: {', '.join(failed)}"
    return report


def markdown(report: dict) -> str:
    lines = [f"# ttt-kernels gpucheck ({report['date']})", "", f"**Status: {report['status']}**", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in report["machine"].items()]
    if report.get("skipped"):
        lines += ["", "## Skipped (no GPU)", ""] + [f"- {s}" for s in report["skipped"]]
    for name, phase in report["phases"].items():
        lines += ["", f"## {name}: {phase['status']}", ""]
        if "seconds" in phase:
            lines.append(f"{phase['seconds']:.0f} s")
        if "passed" in phase:
            lines.append(f"{phase['passed']} passed, {phase['failed']} failed, {phase['skipped']} skipped")
            lines += [f"- FAILED {f}" for f in phase["failures"]]
        if "rows" in phase:
            lines += ["| op | dtype | output error | gradient error | ok |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {r['op']} | {r['dtype']} | {r['output_error']:.2e} | {r['gradient_error']:.2e} | {r['ok']} |"
                      for r in phase["rows"]]  # fmt: skip
        text = phase.get("table") or (phase.get("output_tail") if phase["status"] != "passed" else None)
        if text:
            lines += ["", "```", text, "```"]
    return "\n".join(lines) + "\n"


def run(out_dir: str, minutes: float, bench_dir: str | None, tests_dir: str | None) -> int:
    if not minutes > 0:
        raise CLIError(f"--minutes must be > 0, got {minutes}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CLIError(f"--out: {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "gpucheck.json")):
        # The report overwrites its own files by name: never in a directory of someone else's.
        raise CLIError(f"--out: {out_dir} is a non-empty directory without an earlier gpucheck report; choose another")
    report = gpucheck(out_dir, minutes, bench_dir, tests_dir)
    with open(os.path.join(out_dir, "gpucheck.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out_dir, "gpucheck.md"), "w") as f:
        f.write(markdown(report))
    print(f"gpucheck: {report['status']}")
    for item in report.get("skipped", []):
        print(f"  skipped: {item}")
    print(f"report: {os.path.join(out_dir, 'gpucheck.md')} and gpucheck.json")
    return 0 if report["status"] == "all passed" or report.get("skipped") else 1
