"""C++ users: the installed CMake package (examples/cpp built with plain CMake against it) and the plain compiler
recipe of the README, both run without LD_LIBRARY_PATH (the library's RUNPATH finds torch's libraries)."""

import os
import shutil
import subprocess
import sys

import pytest

import ttt_kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def _tool(name: str) -> str:
    """A build tool from PATH or from the interpreter's environment (pip's cmake and ninja)."""
    path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.fail(f"{name} is not installed (requirements/build.txt)")
    return path


def _run(argv, env=None, **kwargs):
    r = subprocess.run(argv, capture_output=True, text=True, env=env or ENV, **kwargs)
    assert r.returncode == 0, f"{' '.join(map(str, argv))}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def test_cmake_package_example(tmp_path):
    build = tmp_path / "build"
    _run([
        _tool("cmake"), "-S", os.path.join(REPO, "examples", "cpp"), "-B", str(build), "-G", "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", f"-DCMAKE_PREFIX_PATH={ttt_kernels.cmake_prefix_path()}",
    ])  # fmt: skip
    _run([_tool("cmake"), "--build", str(build)])
    out = _run([str(build / "ttt_kernels_example")])
    assert (
        out.splitlines()[0]
        == f"ttt_kernels {ttt_kernels.__version__} (torch {ttt_kernels.build_info()['torch_version']})"
    )
    assert "rms_norm_fwd: max error" in out and "via the dispatcher: max error" in out and out.endswith("OK\n"), out


def test_plain_compiler_recipe(tmp_path):
    """g++ prog.cpp -I$(include_dir) -L$(lib_dir) -lttt_kernels_cpu -Wl,-rpath,$(lib_dir): a program calling a CPU
    kernel through its params struct links and starts without torch: neither torch's libraries nor the CUDA runtime
    are loaded (a CUDA build of torch's libtorch_cpu.so needs libcudart), and the kernel runs on its OpenMP threads
    (4096 rows: several threads' share) with the right result."""
    source = tmp_path / "prog.cpp"
    source.write_text(
        "#include <fstream>\n#include <iostream>\n#include <string>\n#include <vector>\n"
        '#include "ttt_kernels/cpu_parallel.h"\n#include "ttt_kernels/rms_norm.h"\n'
        "int main() {\n"
        "  const int rows = 4096, dim = 64;\n"
        "  std::vector<float> x(rows * dim), w(dim, 2.0f), out(rows * dim), rstd(rows);\n"
        "  for (int r = 0; r < rows; ++r) for (int i = 0; i < dim; ++i) x[r * dim + i] = (r % 7 + 1) * 0.5f;\n"
        "  ttt::RmsNormParams p;\n"
        "  p.x = x.data(); p.weight = w.data(); p.out = out.data(); p.rstd = rstd.data();\n"
        "  p.rows = rows; p.dim = dim; p.eps = 1e-6; p.dtype = ttt::DType::kFloat32;\n"
        "  ttt::cpu::rms_norm_fwd(p);\n"
        '  for (float v : out) if (v < 1.999f || v > 2.001f) { std::cout << "wrong: " << v << "\\n"; return 1; }\n'
        '  std::ifstream maps("/proc/self/maps");\n'
        "  for (std::string line; std::getline(maps, line);)\n"
        '    if (line.find("cuda") != std::string::npos || line.find("libtorch") != std::string::npos ||\n'
        '        line.find("libc10") != std::string::npos) { std::cout << "loaded: " << line << "\\n"; return 2; }\n'
        '  std::cout << ttt::cpu::num_threads() << " threads\\n";\n'
        "  return 0;\n"
        "}\n"
    )
    lib = ttt_kernels.lib_dir()
    exe = tmp_path / "prog"
    cxx = shutil.which("g++") or shutil.which("c++")
    _run([cxx, "-std=c++17", str(source), f"-I{ttt_kernels.include_dir()}", f"-L{lib}", "-lttt_kernels_cpu",
          f"-Wl,-rpath,{lib}", "-o", str(exe)])  # fmt: skip
    out = _run([str(exe)], env={**ENV, "OMP_NUM_THREADS": "2"})
    assert out.strip() == "2 threads", out
