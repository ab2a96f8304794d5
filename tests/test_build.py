"""The build itself: what info() reports, the CUDA resource report, and the CUDA dispatch of every op."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import ttt_kernels

# The archs every CUDA build must contain (TTT_KERNELS_CUDA_ARCHS default; CI builds with it).
REQUIRED_ARCHS = {"sm_80", "sm_90a"}
BUILD = ttt_kernels.build_info()
needs_cuda_kernels = pytest.mark.skipif(not BUILD["cuda_kernels"], reason="built without CUDA kernels (no nvcc)")


def test_info_prints_every_field(capsys):
    ttt_kernels.info()
    out = capsys.readouterr().out
    for key in ("ttt_kernels", "torch", "CPU ISA", "CUDA", "simulator"):
        assert key in out
    assert BUILD["version"] == ttt_kernels.__version__
    assert BUILD["cpu_isa"].split()[0] in ("x86-64", "aarch64", "generic")


def test_import_exposes_the_submodules():
    """``import ttt_kernels`` alone gives ttt_kernels.ops / .model / .reference (imported on first use)."""
    code = (
        "import sys, ttt_kernels\n"
        "assert 'ttt_kernels.model' not in sys.modules\n"
        "assert callable(ttt_kernels.ops.swa_attention) and callable(ttt_kernels.reference.rms_norm)\n"
        "assert ttt_kernels.model.TTTE2EModel.__name__ == 'TTTE2EModel'\n"
        "assert {'ops', 'model', 'reference'} <= set(dir(ttt_kernels))\n"
        "try:\n    ttt_kernels.no_such_module\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_headers_and_library_are_installed():
    assert os.path.exists(os.path.join(ttt_kernels.include_dir(), "ttt_kernels", "build_info.h"))
    assert any(name.startswith("libttt_kernels") for name in os.listdir(ttt_kernels.lib_dir()))


def _testing_report() -> dict | None:
    """The resource report of libttt_kernels_testing.so's kernels (tests/native)."""
    path = os.path.join(ttt_kernels.lib_dir(), "testing", "cuda_resources.json")
    with open(path) as f:
        return json.load(f)


@needs_cuda_kernels
@pytest.mark.parametrize("library", ["ttt_kernels", "ttt_kernels_testing"])
def test_resource_report_covers_every_kernel_on_every_arch_without_spills(library):
    report = ttt_kernels.cuda_resources() if library == "ttt_kernels" else _testing_report()
    assert report is not None, "cuda_resources.json is missing from the installed package"
    assert REQUIRED_ARCHS <= set(report["archs"]), f"archs built: {report['archs']}"
    kernels = report["kernels"]
    assert kernels, "the resource report lists no kernel"
    archs_of = {}
    for k in kernels:
        archs_of.setdefault(k["mangled"], set()).add(k["arch"])
    missing = {name: REQUIRED_ARCHS - archs for name, archs in archs_of.items() if not REQUIRED_ARCHS <= archs}
    assert not missing, f"kernels missing an arch: {missing}"
    spills = [k for k in kernels if k["spill_store_bytes"] or k["spill_load_bytes"]]
    assert not spills, "register spills:\n" + "\n".join(
        f"{k['kernel']} [{k['arch']}]: {k['spill_store_bytes']} B stored, {k['spill_load_bytes']} B loaded"
        for k in spills
    )
    for k in kernels:
        assert 0 < k["registers"] <= 255, k
        # Static shared memory is capped at 48 KiB per block; larger tiles must use dynamic shared memory.
        assert k["shared_bytes"] <= 48 * 1024, k


def ttt_ops():
    """Every public op of the package's torch library (private ones start with an underscore)."""
    names = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ttt_kernels::")}
    return sorted(n for n in names if not n.startswith("_"))


def test_cuda_kernels_and_libraries_are_apart():
    """libttt_kernels_cpu.so needs no torch library and libttt_kernels.so no CUDA library; the CUDA kernels and their
    registrations are in libttt_kernels_cuda.so (present in a build with CUDA kernels)."""
    needed = {}
    for name in ("libttt_kernels_cpu.so", "libttt_kernels.so", "libttt_kernels_cuda.so"):
        path = os.path.join(ttt_kernels.lib_dir(), name)
        if os.path.exists(path):
            out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
            needed[name] = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    assert not [n for n in needed["libttt_kernels_cpu.so"] if "torch" in n or "c10" in n or "cuda" in n]
    assert not [n for n in needed["libttt_kernels.so"] if "cuda" in n], needed["libttt_kernels.so"]
    assert ("libttt_kernels_cuda.so" in needed) == BUILD["cuda_kernels"]


def test_test_kernels_are_not_in_the_library():
    """The self-test kernels and ops (tests/native) live in libttt_kernels_testing.so, which the tests load."""
    code = "import torch, ttt_kernels\nprint(hasattr(torch.ops.ttt_kernels, '_sim_selftest'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    library = os.path.join(ttt_kernels.lib_dir(), "libttt_kernels.so")
    symbols = subprocess.run(["nm", "-D", "-C", library], capture_output=True, text=True).stdout
    assert symbols and "selftest" not in symbols


def test_every_op_has_a_cpu_kernel():
    ops = ttt_ops()
    assert ops, "no op registered under torch.ops.ttt_kernels"
    for name in ops:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttt_kernels::{name}", "CPU"), name


@pytest.mark.skipif(not torch.version.cuda, reason="CPU build of torch: no CUDA dispatch to register")
@pytest.mark.skipif(not BUILD["cuda_kernels"], reason="built without CUDA kernels (TTT_KERNELS_CUDA=OFF or no nvcc)")
def test_every_op_has_a_cuda_kernel_with_a_cuda_torch():
    assert BUILD["cuda_dispatch"], "torch has CUDA but the CUDA glue was not linked (was nvcc missing?)"
    for name in ttt_ops():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttt_kernels::{name}", "CUDA"), name
