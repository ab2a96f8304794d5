"""ttt_kernels: fused CPU and CUDA kernels for End-to-End Test-Time Training (TTT-E2E).

Importing the package loads the native library, which registers every op under ``torch.ops.ttt_kernels``. The
Python entry points live in :mod:`ttt_kernels.ops`, the pure-PyTorch references in :mod:`ttt_kernels.reference`,
the model in :mod:`ttt_kernels.model`; ``import ttt_kernels`` makes them attributes on first use
(``ttt_kernels.ops.swa_attention(...)``), so that importing the package stays cheap.
"""

import importlib
import json
import os

import torch  # loads libtorch before the native library that links it

from . import _C

__version__ = _C.build_info()["version"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(_C.__file__))
if _C.build_info()["cuda_dispatch"]:
    # The CUDA kernels and their op registrations live in a library of their own (libttt_kernels.so needs no CUDA
    # library): loading it registers the CUDA implementations of the ops.
    torch.ops.load_library(os.path.join(_PACKAGE_DIR, "libttt_kernels_cuda.so"))
_SUBMODULES = ("ops", "reference", "model", "sim", "op_counter", "cli")


def __getattr__(name: str):
    """The submodules, imported on first access (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ttt_kernels' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBMODULES})


def include_dir() -> str:
    """Directory of the C++ headers, for code that links ``lib_dir()/libttt_kernels.so``."""
    return os.path.join(_PACKAGE_DIR, "include")


def lib_dir() -> str:
    """Directory holding ``libttt_kernels.so``."""
    return _PACKAGE_DIR


def cmake_prefix_path() -> str:
    """The prefix for CMake's ``find_package(ttt_kernels CONFIG)`` (imported target ``ttt_kernels::ttt_kernels``):
    ``cmake -DCMAKE_PREFIX_PATH=$(python -c "import ttt_kernels; print(ttt_kernels.cmake_prefix_path())")``."""
    return _PACKAGE_DIR


def cuda_resources() -> dict | None:
    """nvcc's per-kernel resource report (registers, shared memory, stack, spills) for every kernel and arch.

    None when the library was built without CUDA kernels.
    """
    path = os.path.join(_PACKAGE_DIR, "cuda_resources.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def build_info() -> dict:
    """What this build contains, as a dict (see :func:`info` for the printed form)."""
    info = dict(_C.build_info())
    info["cuda_available"] = torch.cuda.is_available()
    return info


def _malloc_settings() -> str:
    """The glibc malloc thresholds the environment sets (the command line sets them: ttt_kernels.cli.GLIBC_MALLOC)."""
    from .cli import GLIBC_MALLOC

    return ", ".join(f"{k}={os.environ[k]}" for k in GLIBC_MALLOC if k in os.environ)


def info() -> None:
    """Prints the version, the torch it was built for, the CPU ISA, the CUDA kernels and the simulator."""
    b = build_info()
    if b["cuda_kernels"]:
        archs = ", ".join(f"sm_{a}" for a in b["cuda_archs"].split(","))
        dispatch = "torch CUDA dispatch registered" if b["cuda_dispatch"] else "no CUDA dispatch (CPU torch)"
        cuda = f"kernels for {archs}; {dispatch}"
        cuda += "; GPU present" if b["cuda_available"] else "; no GPU visible"
    else:
        cuda = "not built"
    rows = [
        ("ttt_kernels", b["version"]),
        ("torch", f"{torch.__version__} (built against {b['torch_version']})"),
        ("CPU ISA", b["cpu_isa"]),
        ("CPU threads", str(torch.get_num_threads())),
        ("OpenMP wait", os.environ.get("OMP_WAIT_POLICY", "not set (idle threads spin)")),
        ("malloc", _malloc_settings() or "not set (glibc returns freed memory to the kernel)"),
        ("CUDA", cuda),
        ("simulator", "built" if b["simulator"] else "not built"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
