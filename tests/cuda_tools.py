"""Where the CUDA binary utilities are: for the SASS tests (tests/helpers.py) and the mutation runner
(tests/mutation/run.py), which must not import torch."""

import glob
import importlib.util
import os
import shutil


def find_cuda_tool(name):
    """A CUDA binary utility from PATH or from NVIDIA's wheels (site-packages/nvidia/*/bin), or None."""
    path = shutil.which(name)
    if path:
        return path
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(glob.glob(os.path.join(root, "*", "bin", name)))
        if found:
            return found[0]
    return None
