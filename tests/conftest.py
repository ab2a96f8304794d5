import json
import os

import pytest
import torch
from helpers import arch_instructions, kernel_key, kernel_sass

import ttt_kernels


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, with the reason shown, on machines without a CUDA device; never silently passed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- the command line's corpus -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """A deterministic Python-like text file of ~40 KB."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [f"def f{i}(x, y={i % 7}):\n    return x * y + {i * 31 % 97}  # {'abc' * (i % 5)}\n" for i in range(800)]
    path.write_text("".join(lines))
    return str(path)


# ---- kernel coverage -------------------------------------------------------------------------------------------------


def compiled_kernels() -> set:
    """Every kernel nvcc compiled into the installed libraries (their cuda_resources.json), as helpers.kernel_key."""
    reports = [ttt_kernels.cuda_resources()]
    testing = os.path.join(ttt_kernels.lib_dir(), "testing", "cuda_resources.json")
    if os.path.exists(testing):
        with open(testing) as f:
            reports.append(json.load(f))
    return {kernel_key(k["kernel"]) for report in reports if report for k in report["kernels"]}


def instruction_mismatches(launched: set) -> list | None:
    """Per kernel that ran in the simulator, whether the device/arch.h instructions in its SASS (each arch) are exactly
    those it executed in the simulator: a primitive nvcc compiled that no test executed, or a PTX string whose SASS
    is not the variant the simulator models (a dropped .trans, a wrong element type). Lists the differences; None
    when there is no SASS to read (no CUDA kernels, or no cuobjdump)."""
    if not ttt_kernels.build_info()["cuda_kernels"]:
        return None
    executed = {kernel_key(k): set(v) for k, v in ttt_kernels.sim.executed_instructions().items()}
    libraries = [
        os.path.join(ttt_kernels.lib_dir(), name)
        for name in ("libttt_kernels_cuda.so", "testing/libttt_kernels_testing.so")
    ]
    mismatches = []
    for library in filter(os.path.exists, libraries):
        sass = kernel_sass(library)
        if sass is None:
            return None
        for (arch, name), instructions in sorted(sass.items()):
            key = kernel_key(name)
            if key not in launched:
                continue
            in_sass, ran = arch_instructions(instructions), executed.get(key, set())
            if in_sass != ran:
                mismatches.append(
                    f"{key} ({arch}): only in the SASS: {sorted(in_sass - ran)}; only executed: {sorted(ran - in_sass)}"
                )
    return mismatches


def pytest_sessionfinish(session, exitstatus):
    """With TTT_KERNELS_KERNEL_COVERAGE=1 (CI sets it; it is meant for a run of the whole suite): every kernel nvcc
    compiled (the CUTLASS GEMMs included) must have run in the simulator during the session, and the arch.h instructions
    of each one's SASS must be those it executed there; else the run fails and lists the kernels. The report goes to
    TTT_KERNELS_KERNEL_COVERAGE_REPORT if set."""
    if os.environ.get("TTT_KERNELS_KERNEL_COVERAGE") != "1" or exitstatus != 0:
        return
    compiled = compiled_kernels()
    launched = {kernel_key(name) for name in ttt_kernels.sim.launched_kernels()}
    missing = sorted(compiled - launched)
    mismatches = instruction_mismatches(launched)
    report = {
        "compiled": len(compiled),
        "executed": len(compiled & launched),
        "never_executed": missing,
        "instruction_mismatches": mismatches,
        "launched": sorted(launched),
    }
    if os.environ.get("TTT_KERNELS_KERNEL_COVERAGE_REPORT"):
        with open(os.environ["TTT_KERNELS_KERNEL_COVERAGE_REPORT"], "w") as f:
            json.dump(report, f, indent=1)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = f"kernel coverage: {report['executed']} of {len(compiled)} compiled kernels ran in the simulator"
    if mismatches is None:
        summary += "; SASS instruction check not run (no CUDA kernels or no cuobjdump)"
    else:
        summary += f"; SASS arch.h instructions differ from the simulator's for {len(mismatches)} kernel(s)"
    if terminal is not None:
        terminal.write_line(summary)
        for name in missing:
            terminal.write_line(f"  never executed: {name}")
        for line in mismatches or []:
            terminal.write_line(f"  SASS vs simulator: {line}")
    if missing or mismatches:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
