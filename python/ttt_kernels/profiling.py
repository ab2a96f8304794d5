"""Named ranges for profilers: ``with phase("ttt.chunk 3"): ...`` shows up in torch.profiler traces (as a
``record_function`` row) and, on a machine with CUDA, in Nsight Systems timelines (as an NVTX range on the calling
thread). The model marks its phases with it (docs/profiling.md); user code may add its own.

Costs nothing measurable when nothing records: the torch.profiler row is made only while a profiler is active, and
an NVTX push/pop without an attached tool is a few hundred nanoseconds.
"""

import contextlib

import torch

_profiler_enabled = torch._C._autograd._profiler_enabled


@contextlib.contextmanager
def phase(name: str):
    """A range named ``name`` around the block, in torch.profiler and (with CUDA) NVTX."""
    nvtx = torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        if _profiler_enabled():
            with torch.profiler.record_function(name):
                yield
        else:
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()
