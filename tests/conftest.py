import json
import os
import re

import pytest
import torch

import ttt_kernels


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, with the reason shown, on machines without a CUDA device; never silently passed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- kernel coverage -------------------------------------------------------------------------------------------------

# The CUTLASS GEMMs run in the simulator through a host stand-in (csrc/cuda/gemm.cu), not from their own source: they
# are the known gap of the coverage (docs/simulator.md, "Kernel coverage").
_NOT_SIMULATED = re.compile(r"cutlass")


def _kernel_key(name: str) -> str:
    """A kernel's name as nvcc's report and the simulator both spell it: no return type, namespace ttt::cuda."""
    return name.removeprefix("void ").replace("ttt::cuda_sim::", "ttt::cuda::").replace(" ", "")


def compiled_kernels() -> set:
    """Every kernel nvcc compiled into the installed libraries (their cuda_resources.json), as _kernel_key."""
    reports = [ttt_kernels.cuda_resources()]
    testing = os.path.join(ttt_kernels.lib_dir(), "testing", "cuda_resources.json")
    if os.path.exists(testing):
        with open(testing) as f:
            reports.append(json.load(f))
    return {_kernel_key(k["kernel"]) for report in reports if report for k in report["kernels"]}


def pytest_sessionfinish(session, exitstatus):
    """With TTT_KERNELS_KERNEL_COVERAGE=1 (CI sets it; it is meant for a run of the whole suite): every kernel nvcc
    compiled, but the CUTLASS GEMMs, must have run in the simulator during the session, else the run fails and lists
    the kernels never executed. The report goes to TTT_KERNELS_KERNEL_COVERAGE_REPORT if set."""
    if os.environ.get("TTT_KERNELS_KERNEL_COVERAGE") != "1" or exitstatus != 0:
        return
    compiled = compiled_kernels()
    launched = {_kernel_key(name) for name in ttt_kernels.sim.launched_kernels()}
    checked = {k for k in compiled if not _NOT_SIMULATED.search(k)}
    missing = sorted(checked - launched)
    report = {
        "compiled": len(compiled),
        "checked": len(checked),
        "executed": len(checked & launched),
        "not_simulated": sorted(compiled - checked),
        "never_executed": missing,
        "launched": sorted(launched),
    }
    if os.environ.get("TTT_KERNELS_KERNEL_COVERAGE_REPORT"):
        with open(os.environ["TTT_KERNELS_KERNEL_COVERAGE_REPORT"], "w") as f:
            json.dump(report, f, indent=1)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (
        f"kernel coverage: {report['executed']} of {len(checked)} compiled kernels ran in the simulator "
        f"({len(report['not_simulated'])} CUTLASS GEMMs run by the simulator's stand-in)"
    )
    if terminal is not None:
        terminal.write_line(summary)
        for name in missing:
            terminal.write_line(f"  never executed: {name}")
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
