import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, with the reason shown, on machines without a CUDA device; never silently passed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
