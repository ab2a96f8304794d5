"""The progress bars of the command line (train, eval, the demo, generate)."""

import os
import sys


def progress_bar(total: int, desc: str, unit: str, enabled: bool | None, initial: int = 0):
    """A tqdm bar on stderr if ``enabled`` (None: if stderr is a terminal), else None."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        width = 0
    # A terminal that reports no size (some pseudo-terminals) would hide the bar: assume 100 x 20.
    sizing = dict(dynamic_ncols=True) if width > 0 else dict(ncols=100, nrows=20)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, **sizing)
