"""Tests of the tensor-core and cp.async primitives of include/ttt_kernels/device/arch.h.

1. The fragment layouts (include/ttt_kernels/device/fragment_layout.h) against CuTe's MMA/copy traits, by a host C++
   program (tests/arch/cute_layout_check.cpp) compiled here with g++.
2. The self-test kernels (tests/native/arch_selftest.cu) through torch.ops.ttt_kernels._arch_selftest of
   libttt_kernels_testing.so: in the simulator (CPU tensors) under several schedules, and on a GPU when there is
   one. Expected values come from torch.matmul and from the PTX ISA's fragment formulas written out below,
   independently of fragment_layout.h.
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import SASS_ARCHS, arch_instructions, kernel_key, sass_or_skip

import ttt_kernels

ROOT = Path(__file__).resolve().parents[1]
SENTINEL = 0xA5  # kArchSelftestSentinel: the cp.async kernel's shared buffer before any copy lands
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


# ---- fragment layouts vs CuTe ----------------------------------------------------------------------------------------


def _cutlass_include():
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "source" / "include"
    return path if (path / "cute" / "layout.hpp").is_file() else None


def _cuda_include_dirs():
    """CuTe's host headers include cuda_runtime_api.h and CCCL's cuda/std headers: the CUDA toolkit's include dirs."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    roots += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in filter(None, roots):
        include = Path(root) / "include"
        if (include / "cuda_runtime_api.h").is_file():
            return [include] + ([include / "cccl"] if (include / "cccl").is_dir() else [])
    return None


def test_fragment_layouts_match_cute(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: it compiles the CuTe layout check")
    cutlass = _cutlass_include()
    if cutlass is None:
        pytest.skip("the nvidia-cutlass wheel (cutlass_library/source/include/cute) is not installed")
    cuda = _cuda_include_dirs()
    if cuda is None:
        pytest.skip("CUDA toolkit headers not found (CuTe's headers include cuda_runtime_api.h); set CUDA_HOME")
    exe = tmp_path / "cute_layout_check"
    system = [arg for d in [cutlass, *cuda] for arg in ("-isystem", str(d))]
    build = subprocess.run(
        [
            gxx,
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{ROOT / 'include'}",
            *system,
            str(ROOT / "tests" / "arch" / "cute_layout_check.cpp"),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith(" 0 mismatches"), run.stdout


# ---- self-test kernels -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def selftest():
    from helpers import load_testing_library

    load_testing_library()
    return torch.ops.ttt_kernels._arch_selftest


def _run(selftest, device, kernel, inputs, make_outputs, memcheck=True):
    """Runs `kernel` on `device` with fresh outputs and returns them (on the CPU). In the simulator it runs under
    every schedule, which must give bit-identical outputs, with every memory access checked unless memcheck=False."""
    from helpers import run_in_simulator  # imports ttt_kernels: the CuTe check above runs without the package

    inputs = [t.to(device) for t in inputs]

    def run():
        outputs = [t.to(device) for t in make_outputs()]
        selftest(kernel, inputs + outputs)
        return [t.cpu() for t in outputs]

    return run_in_simulator(run, seed=1, memcheck=memcheck) if device == "cpu" else run()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("trans", [False, True], ids=["ldmatrix", "ldmatrix_trans"])
def test_mma(selftest, device, dtype, trans):
    g = torch.Generator().manual_seed(1 + trans)
    a = torch.randn(16, 16, generator=g).to(dtype)  # (m, k)
    b = torch.randn(16, 8, generator=g).to(dtype)  # (k, n)
    c = torch.randn(16, 8, generator=g)
    # mma stores A as (m, k) and B as B^T (n, k); mma_trans stores A^T (k, m) and B (k, n).
    a_arg, b_arg = (a.t().contiguous(), b) if trans else (a, b.t().contiguous())
    d, d16 = _run(
        selftest,
        device,
        "mma_trans" if trans else "mma",
        [a_arg, b_arg, c],
        lambda: [torch.full((16, 8), float("nan")), torch.full((16, 8), float("nan"), dtype=dtype)],
    )
    expected = a.double() @ b.double() + c.double()
    torch.testing.assert_close(d.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(d16, d.to(dtype)), "pack2 must round to nearest even, element 0 in the low half"
    if device == "cpu":
        # The simulator's documented rounding: fp32 sum in k order starting from C (every product is exact in fp32).
        acc = c.clone()
        for k in range(16):
            acc = acc + a[:, k : k + 1].float() * b[k : k + 1, :].float()
        assert torch.equal(d, acc)


def _ptx_ldmatrix_fragment(src, num, trans):
    """The PTX ISA's ldmatrix layout: lane l, register i holds matrix i (rows 8i..8i+7 of src), row l // 4, columns
    2 (l % 4) and 2 (l % 4) + 1 in its low and high halves; with .trans, rows 2 (l % 4) and 2 (l % 4) + 1 of column
    l // 4. Returns (low, high), each [32, num]."""
    low = torch.empty(32, num, dtype=torch.int64)
    high = torch.empty(32, num, dtype=torch.int64)
    for lane in range(32):
        group, tig = lane // 4, lane % 4
        for i in range(num):
            m = src[8 * i : 8 * i + 8].long()
            if trans:
                low[lane, i], high[lane, i] = m[2 * tig, group], m[2 * tig + 1, group]
            else:
                low[lane, i], high[lane, i] = m[group, 2 * tig], m[group, 2 * tig + 1]
    return low, high


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["n", "trans"])
def test_ldmatrix(selftest, device, num, trans):
    rows = torch.arange(8 * num)[:, None]
    src = (rows * 16 + torch.arange(8)[None, :]).to(torch.int16)  # element value = row * 16 + col
    kernel = f"ldmatrix_x{num}" + ("_trans" if trans else "")
    (out,) = _run(selftest, device, kernel, [src], lambda: [torch.full((32, num), -1, dtype=torch.int32)])
    out = out.long() & 0xFFFFFFFF
    low, high = _ptx_ldmatrix_fragment(src, num, trans)
    assert torch.equal(out & 0xFFFF, low)
    assert torch.equal(out >> 16, high)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kernel,chunk", [("cp_async_ca4", 4), ("cp_async_ca8", 8), ("cp_async_ca16", 16), ("cp_async_cg16", 16)]
)
@pytest.mark.parametrize("valid", ["all", "partial", "none"])
def test_cp_async(selftest, device, kernel, chunk, valid):
    total = 64 * chunk  # 32 threads x 2 chunks; thread t copies chunk t (group 0), then chunk 32 + t (group 1)
    src = ((torch.arange(total) * 7 + 1) % 251).to(torch.uint8)
    src[src == SENTINEL] = 0x5A  # so that a copy that landed early is told apart from the untouched buffer
    # "partial" ends inside a chunk of the first group: one chunk is partly zero-filled, later ones wholly.
    valid_bytes = {"all": total, "partial": total // 4 + 3, "none": 0}[valid]
    inputs = [src, torch.tensor(valid_bytes)]
    make_outputs = lambda: [torch.zeros(3, total, dtype=torch.uint8)]  # noqa: E731
    if device == "cpu":
        # The kernel snapshots the destination before its waits, to observe when copies land: a hazard that the
        # memory checks report (the observation below runs without them).
        with pytest.raises(RuntimeError, match=r"thread \(0,0,0\) reads bytes \[0, 1\) .* while its own cp.async copy"):
            _run(selftest, device, kernel, inputs, make_outputs)
    (out,) = _run(selftest, device, kernel, inputs, make_outputs, memcheck=False)
    expected = torch.where(torch.arange(total) < valid_bytes, src, torch.zeros_like(src))
    first = 32 * chunk  # bytes of the first group's chunks
    assert torch.equal(out[2], expected), "after cp.async.wait_group 0"
    assert torch.equal(out[1, :first], expected[:first]), "after cp.async.wait_group 1"
    if device == "cpu":
        # The simulator lands copies only at the wait that completes their group: reading before it sees stale data.
        assert torch.all(out[0] == SENTINEL), "the simulator landed a copy before its wait"
        assert torch.all(out[1, first:] == SENTINEL), "the simulator landed the second group at wait_group 1"


def _skip_without_simulator():
    import ttt_kernels

    if not ttt_kernels.sim.is_built():
        pytest.skip("the self-test kernels run on CPU tensors only in the simulator (TTT_KERNELS_SIM=OFF)")


def test_unknown_kernel_is_rejected(selftest):
    _skip_without_simulator()
    with pytest.raises(RuntimeError, match="unknown kernel 'nope'"):
        selftest("nope", [torch.zeros(1)])


def test_bad_argument_is_rejected(selftest):
    _skip_without_simulator()
    a = torch.zeros(16, 16, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"a must be bfloat16 or float16"):
        selftest("mma", [a, a, torch.zeros(16, 8), torch.zeros(16, 8), torch.zeros(16, 8)])


# ---- the instructions nvcc emitted -----------------------------------------------------------------------------------


def _variants(instructions, prefix: str) -> set:
    return {op for op, _ in instructions if op.startswith(prefix)}


# The SASS of the self-test kernels: of the installed testing library, or of TTT_KERNELS_TESTING_SASS, an object nvcc
# compiled from tests/native/arch_selftest.cu (tests/mutation does, with a modified arch.h).
_SASS_OVERRIDE = os.environ.get("TTT_KERNELS_TESTING_SASS")
requires_sass = pytest.mark.skipif(
    not (_SASS_OVERRIDE or ttt_kernels.build_info()["cuda_kernels"]), reason="built without CUDA kernels (no nvcc)"
)


def _selftest_sass():
    library = _SASS_OVERRIDE or os.path.join(ttt_kernels.lib_dir(), "testing", "libttt_kernels_testing.so")
    return sass_or_skip(library, "arch_")


@requires_sass
def test_sass_has_the_exact_instruction_variant_of_every_primitive():
    """Per self-test kernel and arch, the exact SASS variants of the primitive it wraps: the simulator checks
    fragment_layout.h's model, this checks that the PTX strings of arch.h say the same (a dropped .trans, a wrong
    element type or cache hint shows up here), and that the bf16x2/f16x2 pack puts acc[2j + 1] in the high half."""
    kernels = _selftest_sass()
    for arch in SASS_ARCHS:
        by_name = {name: instrs for (a, name), instrs in kernels.items() if a == arch}
        seen = set()
        for name, instrs in by_name.items():
            args = re.search(r"<(.*)>\(", name).group(1).replace(" ", "").split(",")
            if "arch_ldmatrix_kernel" in name:
                num, trans = int(args[0]), args[1] == "true"
                want = {f"LDSM.16.{'MT88' if trans else 'M88'}{'' if num == 1 else f'.{num}'}"}
                assert _variants(instrs, "LDSM") == want, (arch, name)
            elif "arch_mma_kernel" in name:
                bf16, trans = args[0] == "__nv_bfloat16", args[1] == "true"
                m88 = "MT88" if trans else "M88"
                assert _variants(instrs, "LDSM") == {f"LDSM.16.{m88}.4", f"LDSM.16.{m88}.2"}, (arch, name)
                assert _variants(instrs, "HMMA") == {"HMMA.16816.F32" + (".BF16" if bf16 else "")}, (arch, name)
                packs = [(op, ops) for op, ops in instrs if op.startswith("F2FP")]
                assert len(packs) == 2 and all(("BF16" in op) == bf16 and "PACK_AB" in op for op, _ in packs), packs
                # HMMA d, a, b, c writes acc[0..3] to d, d+1, d+2, d+3; PACK_AB's first source is the high half.
                ((_, hmma),) = [(op, ops) for op, ops in instrs if op.startswith("HMMA")]
                d = int(hmma.split(",")[0].strip().lstrip("R"))
                sources = sorted(tuple(int(r.strip().lstrip("R")) for r in ops.split(",")[1:3]) for _, ops in packs)
                assert sources == [(d + 1, d), (d + 3, d + 2)], (arch, name, hmma, packs)
            elif "arch_cp_async_kernel" in name:
                size, bypass = int(args[0]), args[1] == "true"
                base = "LDGSTS.E" + (".BYPASS" if bypass else "") + {4: "", 8: ".64", 16: ".128"}[size]
                assert _variants(instrs, "LDGSTS") == {base, base + ".ZFILL"}, (arch, name)
                assert {"LDGDEPBAR", "DEPBAR.LE"} <= {op for op, _ in instrs}, (arch, name)
            else:
                continue
            seen.add(name.split("<")[0])
        assert len(seen) == 3, (arch, sorted(by_name))


@requires_sass
def test_sass_instructions_are_those_the_simulator_executed(selftest):
    """Per self-test kernel and arch, the arch.h instructions of its SASS (helpers.SASS_TO_PTX) are exactly those it
    executed in the simulator: what tests/conftest.py checks for every kernel after a CI run, here on the primitives'
    own kernels, every variant run once (zeros: only the instructions matter)."""
    _skip_without_simulator()
    with ttt_kernels.sim.enabled(memcheck=False):  # the cp.async kernel reads its destination before the waits
        for dtype in (torch.bfloat16, torch.float16):
            for kernel in ("mma", "mma_trans"):
                operands = [torch.zeros(16, 16, dtype=dtype), torch.zeros(8, 16, dtype=dtype)]
                if kernel == "mma_trans":
                    operands[1] = torch.zeros(16, 8, dtype=dtype)
                outputs = [torch.zeros(16, 8), torch.zeros(16, 8, dtype=dtype)]
                selftest(kernel, [*operands, torch.zeros(16, 8), *outputs])
        for num in (1, 2, 4):
            for suffix in ("", "_trans"):
                selftest(
                    f"ldmatrix_x{num}{suffix}",
                    [torch.zeros(8 * num, 8, dtype=torch.int16), torch.zeros(32, num, dtype=torch.int32)],
                )
        for kernel, chunk in (("cp_async_ca4", 4), ("cp_async_ca8", 8), ("cp_async_ca16", 16), ("cp_async_cg16", 16)):
            src = torch.zeros(64 * chunk, dtype=torch.uint8)
            selftest(kernel, [src, torch.tensor(64 * chunk), torch.zeros(3, 64 * chunk, dtype=torch.uint8)])
    executed = {kernel_key(k): set(v) for k, v in ttt_kernels.sim.executed_instructions().items()}
    kernels = _selftest_sass()
    for arch in SASS_ARCHS:
        compared = 0
        for (a, name), instructions in kernels.items():
            if a != arch:
                continue
            key = kernel_key(name)
            assert key in executed, f"{key} did not run in the simulator"
            assert arch_instructions(instructions) == executed[key], (arch, key)
            compared += 1
        assert compared >= 14, (arch, compared)  # 4 mma, 6 ldmatrix, 4 cp.async instantiations
