"""Helpers shared by the tests."""

import os
import re
import subprocess

import pytest
import torch
from cuda_tools import find_cuda_tool
from torch.utils._python_dispatch import TorchDispatchMode

import ttt_kernels.sim

SCHEDULES = ("in_order", "reverse", "shuffle")

_BITS_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers of its element size: compares NaNs (and -0.0) bit for bit."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.view(_BITS_DTYPES[t.element_size()])


def assert_bit_identical(a, b, what: str = "output") -> None:
    """Asserts that a and b (tensors, or tuples/lists/dicts of them, or plain values) are identical bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{what}: a tensor and a {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{what}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        )
        differ = _as_bits(a) != _as_bits(b)
        if differ.any():
            first = tuple(int(i) for i in differ.nonzero()[0])
            raise AssertionError(
                f"{what}: {int(differ.sum())} of {a.numel()} elements differ, the first at index {first}: "
                f"{a[first].item()} vs {b[first].item()}"
            )
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), f"{what}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bit_identical(x, y, f"{what}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{what}: keys {list(a)} vs {list(b)}"
        for key in a:
            assert_bit_identical(a[key], b[key], f"{what}[{key!r}]")
    else:
        assert a == b, f"{what}: {a!r} vs {b!r}"


# For tests entering ttt_kernels.sim.enabled() themselves.
requires_simulator = pytest.mark.skipif(
    not ttt_kernels.sim.is_built(), reason="ttt_kernels was built without the CUDA simulator (TTT_KERNELS_SIM=OFF)"
)


def run_in_simulator(fn, *args, schedules=SCHEDULES, seed=0, num_workers=0, memcheck=True):
    """Runs fn(*args) once per schedule inside ``ttt_kernels.sim.enabled(...)`` and returns the first run's output.

    Ops called on CPU tensors inside fn run their CUDA kernel in the simulator. The outputs of all schedules must be
    bit-identical: a kernel whose result depends on the order of its threads between barriers has a race. fn must not
    modify its arguments (each run sees the same inputs). Exceptions (e.g. a kernel error the simulator found, such
    as a shared-memory race or an out-of-bounds access: every load and store of the first schedule's run is checked
    unless ``memcheck=False``) propagate. Skips the test when the package was built without the simulator.
    """
    if not ttt_kernels.sim.is_built():
        pytest.skip("ttt_kernels was built without the CUDA simulator (TTT_KERNELS_SIM=OFF)")
    outputs = []
    for i, schedule in enumerate(schedules):
        # The memory checks do not depend on the schedule: the first run has them, the others compare outputs.
        checked = memcheck and i == 0
        with ttt_kernels.sim.enabled(schedule=schedule, seed=seed, num_workers=num_workers, memcheck=checked):
            outputs.append(fn(*args))
    for schedule, out in zip(schedules[1:], outputs[1:], strict=True):
        assert_bit_identical(outputs[0], out, f"schedule {schedule!r} vs {schedules[0]!r}")
    return outputs[0]


def fails_in_every_schedule(fn, match: str) -> None:
    """fn() raises a RuntimeError matching ``match`` inside ``ttt_kernels.sim.enabled(schedule=...)`` for every
    schedule: a kernel error the simulator reports whatever order it runs the threads in."""
    for schedule in SCHEDULES:
        with ttt_kernels.sim.enabled(schedule=schedule):
            with pytest.raises(RuntimeError, match=match):
                fn()


class RecordedCalls(TorchDispatchMode):
    """``with RecordedCalls(op) as calls: ...`` records the positional arguments of every call of ``op`` (an op
    packet such as ``torch.ops.ttt_kernels.swa_bwd_bwd``) that reaches the dispatcher in ``calls.args``: from Python
    and from C++ alike (the ops' autograd formulas call ops from C++, out of reach of a monkeypatch)."""

    def __init__(self, op):
        super().__init__()
        self.op, self.args = op, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is self.op:
            self.args.append(tuple(args))
        return func(*args, **(kwargs or {}))


def load_testing_library() -> None:
    """Loads libttt_kernels_testing.so (tests/native: the ops _sim_selftest and _arch_selftest), which the package
    installs in ttt_kernels/testing/ when built with TTT_KERNELS_TESTING=ON (install.sh --test and CI do)."""
    path = os.path.join(ttt_kernels.lib_dir(), "testing", "libttt_kernels_testing.so")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build with TTT_KERNELS_TESTING=ON (bash install.sh --test does)")
    torch.ops.load_library(path)


# ---- SASS (cuobjdump) ------------------------------------------------------------------------------------------------

SASS_ARCHS = ("sm_80", "sm_90a")
_SASS_ARCH = re.compile(r"\s*arch = (sm_\w+)")
_SASS_FUNCTION = re.compile(r"\s*Function : (\S+)")
# "/*0120*/   @!P0 HMMA.16816.F32.BF16 R4, R4, R8, R12 ;" -> ("HMMA.16816.F32.BF16", "R4, R4, R8, R12")
_SASS_INSTRUCTION = re.compile(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def kernel_sass(library: str, contains: str = "") -> dict | None:
    """{(arch, demangled kernel name): [(opcode with modifiers, operands)]} of the kernels of ``library`` whose
    mangled name contains ``contains``, in program order; None without cuobjdump and nvdisasm."""
    if find_cuda_tool("cuobjdump") is None or find_cuda_tool("nvdisasm") is None:
        return None
    # cuobjdump -sass runs nvdisasm, which it looks for on PATH.
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(find_cuda_tool("nvdisasm")), os.environ["PATH"]]))
    sass = subprocess.run(
        [find_cuda_tool("cuobjdump"), "-sass", library], capture_output=True, text=True, check=True, env=env
    ).stdout
    mangled = sorted({m for m in re.findall(r"Function : (\S+)", sass) if contains in m})
    names = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True, check=True)
    demangled = dict(zip(mangled, names.stdout.splitlines(), strict=True))
    kernels, arch, instructions = {}, None, None
    for line in sass.splitlines():
        if m := _SASS_ARCH.match(line):
            arch, instructions = m.group(1), None
        elif m := _SASS_FUNCTION.match(line):
            instructions = kernels.setdefault((arch, demangled[m.group(1)]), []) if m.group(1) in demangled else None
        elif instructions is not None and (m := _SASS_INSTRUCTION.match(line)):
            instructions.append((m.group(1), m.group(2).strip()))
    return kernels


def sass_or_skip(library: str, contains: str) -> dict:
    """kernel_sass(library, contains); skips the test without cuobjdump and nvdisasm."""
    kernels = kernel_sass(library, contains)
    if kernels is None:
        pytest.skip(
            "cuobjdump -sass needs cuobjdump and nvdisasm: pip install nvidia-cuda-cuobjdump "
            "nvidia-cuda-nvdisasm, or put the CUDA toolkit's bin directory on PATH"
        )
    return kernels


# The SASS of each device/arch.h instruction (nvcc 13, sm_80 and sm_90a; tests/test_arch.py checks the variants per
# primitive): opcode with modifiers -> the PTX the simulator names it by (ttt_kernels.sim.executed_instructions). A
# cp.async with a src-size operand also emits the .ZFILL form of its LDGSTS, which is left out before the lookup.
_LDMATRIX = "ldmatrix.sync.aligned.m8n8.x{}{}.shared.b16"
SASS_TO_PTX = {
    **{f"LDSM.16.M88{suffix}": _LDMATRIX.format(num, "") for num, suffix in ((1, ""), (2, ".2"), (4, ".4"))},
    **{f"LDSM.16.MT88{suffix}": _LDMATRIX.format(num, ".trans") for num, suffix in ((1, ""), (2, ".2"), (4, ".4"))},
    "HMMA.16816.F32.BF16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    "HMMA.16816.F32": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    "LDGSTS.E": "cp.async.ca.shared.global (4 bytes)",
    "LDGSTS.E.64": "cp.async.ca.shared.global (8 bytes)",
    "LDGSTS.E.128": "cp.async.ca.shared.global (16 bytes)",
    "LDGSTS.E.BYPASS.128": "cp.async.cg.shared.global (16 bytes)",
    # CUTLASS's cp.async with the L2 prefetch hint (csrc/cuda/cutlass_sim.h)
    "LDGSTS.E.BYPASS.LTC128B.128": "cp.async.cg.shared.global.L2::128B (16 bytes)",
}


def kernel_key(name: str) -> str:
    """A kernel's name as nvcc's report, its SASS and the simulator all spell it: no return type, namespace
    ttt::cuda, no spaces."""
    return name.removeprefix("void ").replace("ttt::cuda_sim::", "ttt::cuda::").replace(" ", "")


def arch_instructions(instructions) -> set:
    """The device/arch.h instructions (as PTX) of one kernel's SASS [(opcode, operands)]; an LDSM, HMMA or LDGSTS
    variant missing from SASS_TO_PTX stays as "SASS <opcode>", so that it shows up as a difference."""
    found = set()
    for op, _ in instructions:
        if op.startswith(("LDSM", "HMMA", "LDGSTS")):
            op = op.removesuffix(".ZFILL")
            found.add(SASS_TO_PTX.get(op, f"SASS {op}"))
    return found
