"""Runs the package's CUDA kernels on the CPU through the project's CUDA simulator.

Inside ``with ttt_kernels.sim.enabled(...)``, ops called on CPU tensors execute their CUDA kernel (the same .cu
source, compiled for the host) instead of the CPU kernel. ``schedule`` picks the order in which a block's threads
are resumed between barriers; running a kernel under several schedules and comparing outputs exposes races.
"""

import contextlib

from . import _C

SCHEDULES = ("in_order", "reverse", "shuffle")


def is_built() -> bool:
    """Whether this build contains the simulator."""
    return bool(_C.build_info()["simulator"])


@contextlib.contextmanager
def enabled(schedule: str = "in_order", seed: int = 0, num_workers: int = 0, memcheck: bool = True):
    """Routes ops on CPU tensors called from this thread to the simulated CUDA kernels (the setting is per thread;
    on exit the thread's previous setting is restored).

    Args:
        schedule: "in_order", "reverse" or "shuffle" (re-shuffled at every barrier, deterministic in ``seed``).
        seed: seed of the "shuffle" schedule.
        num_workers: OS threads that run blocks; 0 uses every core.
        memcheck: check every load and store of the kernels: shared-memory races (two threads, at least one
            writing, with no barrier or warp collective ordering them) and out-of-bounds accesses, and global
            accesses outside the tensors the op passed (docs/simulator.md). Off: a faster run with the checks at
            barriers and collectives only.
    """
    if not is_built():
        raise RuntimeError("ttt_kernels was built without the simulator (TTT_KERNELS_SIM=OFF)")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if not isinstance(memcheck, bool):
        raise ValueError(f"memcheck must be a bool, got {memcheck!r}")
    previous = _C.sim_config()
    _C.sim_set_config(enabled=True, schedule=schedule, seed=seed, num_workers=num_workers, memcheck=memcheck)
    try:
        yield
    finally:
        _C.sim_set_config(**previous)


def executed_instructions() -> dict[str, list[str]]:
    """Per kernel the simulator has launched (demangled name), the PTX instructions of ``device/arch.h`` it executed
    (``mma.sync...``, ``ldmatrix.sync...``, ``cp.async...`` variants): tests/conftest.py compares them, kernel by
    kernel, with the instructions nvcc put in its SASS."""
    if not is_built():
        raise RuntimeError("ttt_kernels was built without the simulator (TTT_KERNELS_SIM=OFF)")
    return dict(_C.sim_executed_instructions())


def launched_kernels() -> list[str]:
    """The demangled names of the kernels the simulator has launched in this process (each once, any order): the
    kernel coverage of a test run (tests/conftest.py compares it with every kernel nvcc compiled)."""
    if not is_built():
        raise RuntimeError("ttt_kernels was built without the simulator (TTT_KERNELS_SIM=OFF)")
    return list(_C.sim_launched_kernels())
